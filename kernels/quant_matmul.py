"""Triton matmuls over quantized weights in their GPU layout (block_formats.PLANES, quant_planes_ref): y = x @ W^T
with W [N, K] held as planes, the quants of each row in int32 words and the scale fields apart.

- GEMV (decode, up to GEMV_MAX_ROWS rows of x): a program owns BLOCK_N weight rows and a range of K, which it
  reads BLOCK_U units at a time ([BLOCK_N, BLOCK_U, UNIT] words, quant_tiles: a unit per thread and row, one
  vector load, consecutive lanes on consecutive units of a row), reading the next tile while it multiplies this
  one. Each group's scale is applied after its dot product with x (sum(q * x) * scale + shift * sum(x)). When the
  row tiles are too few to give every SM work (o_proj, down_proj at batch 1) K is split over SPLIT programs
  (quant_tiles.store_tile).
- Up to DOT_MAX_ROWS (small batches, speculative verify steps, short prompts): quant_gemm's tensor-core kernel,
  which decodes each weight once for all rows of x.
- Above (prefill, large batches): the weight is dequantized by a kernel that streams the planes into a bf16 (x's
  dtype) scratch buffer reused by every layer, in row chunks of at most SCRATCH_WEIGHTS, and multiplied by
  torch.matmul (cuBLAS): the extra write and read of 2 bytes a weight cost far less than a 1,024-token prefill's
  matmuls, which then run at the dense speed.

The block decoders (quant_tiles) read a unit's words and its group's scale fields together; the plain-torch
reference is quant_planes_ref.planes_matmul_ref.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.block_formats import PLANES
from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel
from localllm.kernels.quant_gemm import quant_dot
from localllm.kernels.quant_launch import SplitWorkspace, constants, kernel_planes, row_units, sm_count
from localllm.kernels.quant_tiles import (load_units, mantissa_scale_shift, ordered_weights, store_tile,
                                         unit_columns, unit_mantissas, unit_quants, unit_weights)

# The path by rows of x (scripts/gpu_quant_check.py --paths on one H200, Llama-3.1-8B's gate_up and down): the GEMV
# up to GEMV_MAX_ROWS (its time grows with the rows), the tensor-core kernel (flat from 1 to 64 rows: 1.3-3.6x
# faster than dequantize + cuBLAS there) up to DOT_MAX_ROWS, or further for 8-bit formats, then dequantize + cuBLAS
GEMV_MAX_ROWS = 2
DOT_MAX_ROWS = 64
_DOT_MAX_ROWS_8BIT = 256
# tests: use the GPU's tile sizes on CPU tensors too (the interpreter otherwise gets small tiles, for speed)
GPU_TILES_EVERYWHERE = False
# the dequantize-then-cuBLAS path's scratch: at most this many weights at a time (256 MB in bf16)
SCRATCH_WEIGHTS = 1 << 27
# the GEMV splits K until it has about this many programs per SM
PROGRAMS_PER_SM = 4


@triton.jit
def _gemv_quants(words, high, nibble_mask, one_bits, j: tl.constexpr, FMT: tl.constexpr, BITS: tl.constexpr,
                 FP8_HW: tl.constexpr, Q_BITS: tl.constexpr):
    """The GEMV's quants: unit_mantissas where the format has them (Q_BITS > 0), unit_quants otherwise."""
    if Q_BITS > 0:
        q = unit_mantissas(words, high, nibble_mask, one_bits, j, FMT, Q_BITS)
    else:
        q = unit_quants(words, high, j, FMT, BITS, FP8_HW)
    return q


@triton.jit
def _one_row_dots(words, high, nibble_mask, one_bits, x_ptr, units, ok, FMT: tl.constexpr, BITS: tl.constexpr,
                  G: tl.constexpr, UNIT: tl.constexpr, FP8_HW: tl.constexpr, Q_BITS: tl.constexpr):
    """One row of x against units [BU] of the tile's rows (words [R, BU, UNIT]): per unit, the sum of q * x
    [R, BU] and of x [1, BU]. x's [BU, UNIT] columns lie as the words do, so they need no exchange between
    threads."""
    dots = tl.zeros(words.shape, tl.float32)
    x_sums = tl.zeros([words.shape[1], UNIT], tl.float32)
    for j in tl.static_range(32 // BITS):
        xj = tl.load(x_ptr + unit_columns(units, j, BITS, G, UNIT), mask=ok[:, None], other=0.0).to(tl.float32)
        dots += _gemv_quants(words, high, nibble_mask, one_bits, j, FMT, BITS, FP8_HW, Q_BITS) * xj[None]
        x_sums += xj
    return tl.sum(dots, 2), tl.sum(x_sums, 1)[None, :]


@triton.jit
def _tile_sums(words, high, scale, shift, nibble_mask, one_bits, x_ptr, stride_xm, M, units, last,
               BLOCK_M: tl.constexpr, FMT: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr,
               FP8_HW: tl.constexpr, Q_BITS: tl.constexpr, Q_BIAS: tl.constexpr):
    """A tile's sums of w * x over each unit, [BLOCK_M, R, BU], one row of x at a time: a product of all rows of x
    with all rows of the weight would need a four-dimensional tile, which Triton lays out apart from the words'
    and reshuffles through shared memory; the rows' decoding of the same words is the same code, which the
    compiler computes once."""
    if Q_BITS > 0:
        scale, shift = mantissa_scale_shift(scale, shift, Q_BITS, Q_BIAS)
    sums = tl.zeros([BLOCK_M, words.shape[0], words.shape[1]], tl.float32)
    for m in tl.static_range(BLOCK_M):
        x_row = x_ptr + tl.minimum(m, M - 1) * stride_xm     # rows past M repeat the last one; not stored
        dots, x_sums = _one_row_dots(words, high, nibble_mask, one_bits, x_row, units, units < last, FMT, BITS, G,
                                     UNIT, FP8_HW, Q_BITS)
        row_sums = (dots * scale + shift * x_sums)[None]
        sums += row_sums if BLOCK_M == 1 else tl.where(tl.arange(0, BLOCK_M)[:, None, None] == m, row_sums, 0.0)
    return sums


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(x_ptr, y_ptr, partial_ptr, arrivals_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr,
                 M, N, K, stride_xm, stride_ym, units_per_split, SPLIT, nibble_mask, one_bits,
                 FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr,
                 FP8_HW: tl.constexpr, Q_BITS: tl.constexpr, Q_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_U: tl.constexpr, BLOCK_M: tl.constexpr, PREFETCH: tl.constexpr, USE_PDL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # rows past N read row N - 1 (no row mask on the loads); their results are not stored
    plane_rows = tl.minimum(rows, N - 1).to(tl.int64)[:, None]
    first = pid_k * units_per_split
    last = tl.minimum(K // G * (G * BITS // 32 // UNIT), first + units_per_split)
    # The planes are no kernel's output: the first tile is read before waiting for the kernel before this one
    # (launched as its programmatic dependent, this kernel starts while that one finishes); with PREFETCH, each
    # next tile while this one is multiplied (more loads in flight, more registers).
    units = first + tl.arange(0, BLOCK_U)
    words, high, scale, shift = load_units(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, plane_rows, units[None, :],
                                           (units < last)[None, :], K, FMT, BITS, A_PER, G, UNIT)
    wait_for_previous_kernel(USE_PDL)
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_U], tl.float32)
    for u0 in range(first, last, BLOCK_U):
        if PREFETCH:
            next_units = units + BLOCK_U
            next_words, next_high, next_scale, next_shift = load_units(
                q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, plane_rows, next_units[None, :],
                (next_units < last)[None, :], K, FMT, BITS, A_PER, G, UNIT)
        elif u0 > first:
            units = u0 + tl.arange(0, BLOCK_U)
            words, high, scale, shift = load_units(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, plane_rows,
                                                   units[None, :], (units < last)[None, :], K, FMT, BITS, A_PER, G,
                                                   UNIT)
        acc += _tile_sums(words, high, scale, shift, nibble_mask, one_bits, x_ptr, stride_xm, M, units, last,
                          BLOCK_M, FMT, BITS, G, UNIT, FP8_HW, Q_BITS, Q_BIAS)
        if PREFETCH:
            words, high, scale, shift, units = next_words, next_high, next_scale, next_shift, next_units
    store_tile(tl.sum(acc, 2), y_ptr, partial_ptr, arrivals_ptr, tl.arange(0, BLOCK_M), rows, M, N, stride_ym,
               pid_n, pid_k, SPLIT)


@triton.jit
def _dequantize_kernel(w_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, first_row, rows_out, K,
                       FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr,
                       UNIT: tl.constexpr, FP8_HW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_U: tl.constexpr):
    """Rows first_row.. (rows_out of them) of the weight, dequantized into w [rows_out, K] (its dtype)."""
    out_rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    plane_rows = (first_row + tl.minimum(out_rows, rows_out - 1)).to(tl.int64)[:, None]
    units = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    ok = units < K // G * (G * BITS // 32 // UNIT)
    words, high, scale, shift = load_units(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, plane_rows, units[None, :],
                                           ok[None, :], K, FMT, BITS, A_PER, G, UNIT)
    row_ok = out_rows < rows_out
    if UNIT * (32 // BITS) == G:
        # a unit is a whole group: its weights, put in order in registers, are G consecutive columns (stored in
        # 16-byte vectors, where bits j of the words are only UNIT consecutive columns)
        w = ordered_weights(words, high, scale, shift, FMT, BITS, FP8_HW)
        cols = tl.reshape(units[:, None] * G + tl.arange(0, G)[None, :], [BLOCK_U * G])
        mask = row_ok[:, None] & tl.reshape(tl.broadcast_to(ok[:, None], [BLOCK_U, G]), [BLOCK_U * G])[None, :]
        tl.store(w_ptr + out_rows.to(tl.int64)[:, None] * K + cols[None, :], w.to(w_ptr.dtype.element_ty),
                 mask=mask)
    else:
        out = w_ptr + out_rows.to(tl.int64)[:, None, None] * K
        mask = row_ok[:, None, None] & ok[None, :, None]
        for j in tl.static_range(32 // BITS):
            w = unit_weights(words, high, scale, shift, j, FMT, BITS, FP8_HW)
            tl.store(out + unit_columns(units, j, BITS, G, UNIT)[None], w.to(w_ptr.dtype.element_ty), mask=mask)


# (rows, warps) of a GEMV program at one row of x where 4 rows and one warp are not the best (gemv_config)
_GEMV_TILES = {"Q6_K": (1, 1), "Q8_0": (1, 2), "fp8_e4m3_g128": (1, 2)}
# the GEMV's unsigned quants (quant_tiles.unit_mantissas): (bits, bias) of the formats of up to 6 bits
_MANTISSA_QUANTS = {"Q4_0": (4, 8), "Q4_1": (4, 0), "Q4_K": (4, 0), "Q5_K": (5, 0), "Q6_K": (6, 32),
                    "int4_g128": (4, 0)}


def _gemv_constants(fmt: str, x: torch.Tensor) -> dict:
    q_bits, q_bias = _MANTISSA_QUANTS.get(fmt, (0, 0))
    return dict(constants(fmt, x), Q_BITS=q_bits, Q_BIAS=q_bias)


def _mantissa_masks(fmt: str) -> tuple[int, int]:
    """The GEMV's nibble_mask and one_bits (quant_tiles.unit_mantissas)."""
    return 15 << (23 - _MANTISSA_QUANTS.get(fmt, (4, 0))[0]), 0x3F800000


def _gpu_tiles(x: torch.Tensor) -> bool:
    return x.is_cuda or GPU_TILES_EVERYWHERE


def gemv_config(fmt: str, m: int, n: int, k: int, device: torch.device, gpu: bool,
                tiles: dict | None = None) -> dict:
    """Tile of the GEMV: BLOCK_N rows by 32 * num_warps units a step (a unit to each thread, so that x's columns
    lie as the words do), tiles (when given) overriding them, and SPLIT programs along K when the row tiles are
    too few to give every SM PROGRAMS_PER_SM of them."""
    if gpu:   # from scripts/gpu_quant_check.py's sweep on one H200 at Llama-3.1-8B's shapes, at one row of x: the
        # best tile of each format or within 7% of it at every shape (the GEMV is bound by its instructions; small
        # programs, reading each tile ahead, keep the most of them in flight); fewer rows at several rows of x
        rows, warps = _GEMV_TILES.get(fmt, (4, 1))
        config = dict(BLOCK_N=rows if m == 1 else max(1, rows // 2), num_warps=warps, PREFETCH=True)
    else:     # the interpreter: few programs (its cost is per operation, whatever the tile)
        config = dict(BLOCK_N=32, num_warps=1, BLOCK_U=2, PREFETCH=True)
    config.update(tiles or {})
    config.setdefault("BLOCK_U", 32 * config["num_warps"])
    if "SPLIT" not in config:
        row_tiles = triton.cdiv(n, config["BLOCK_N"])
        steps = triton.cdiv(row_units(fmt, k), config["BLOCK_U"])
        config["SPLIT"] = max(1, min(steps, PROGRAMS_PER_SM * sm_count(device) // row_tiles))
    return config


def _gemv(x2: torch.Tensor, planes: dict, fmt: str, y: torch.Tensor, n: int, k: int, tiles: dict | None) -> None:
    m = x2.shape[0]
    config = gemv_config(fmt, m, n, k, x2.device, _gpu_tiles(x2), tiles)
    block_n, block_u, split = config.pop("BLOCK_N"), config.pop("BLOCK_U"), config.pop("SPLIT")
    units = row_units(fmt, k)
    units_per_split = triton.cdiv(triton.cdiv(units, block_u), split) * block_u
    split = triton.cdiv(units, units_per_split)
    row_tiles = triton.cdiv(n, block_n)
    block_m = triton.next_power_of_2(m)
    partial, arrivals = SplitWorkspace.get(x2.device, row_tiles * split * block_m * block_n, row_tiles)
    _gemv_kernel[(row_tiles, split)](
        x2, y, partial, arrivals, *kernel_planes(planes, fmt), m, n, k, x2.stride(0), y.stride(0),
        units_per_split, split, *_mantissa_masks(fmt), **_gemv_constants(fmt, x2), BLOCK_N=block_n,
        BLOCK_U=block_u, BLOCK_M=block_m, **pdl_options(x2.device), **config)


class _Scratch:
    """Per device and dtype: the dense weight rows the large-M path multiplies, reused by every layer."""
    buffers: dict = {}

    @classmethod
    def get(cls, device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
        buffer = cls.buffers.get((device, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = cls.buffers[(device, dtype)] = torch.empty(numel, dtype=dtype, device=device)
        return buffer


def dequantize_rows(planes: dict, fmt: str, first_row: int, rows: int, out: torch.Tensor) -> torch.Tensor:
    """Rows first_row..first_row + rows of the weight, dequantized into out [rows, K] (contiguous, any float
    dtype)."""
    k = out.shape[1]
    block_n, warps = (4, 4) if _gpu_tiles(out) else (32, 1)
    block_u = 32 * warps
    grid = (triton.cdiv(rows, block_n), triton.cdiv(row_units(fmt, k), block_u))
    _dequantize_kernel[grid](out, *kernel_planes(planes, fmt), first_row, rows, k, **constants(fmt, out),
                             BLOCK_N=block_n, BLOCK_U=block_u, num_warps=warps)
    return out


def _dense_matmul(x2: torch.Tensor, planes: dict, fmt: str, y: torch.Tensor, n: int, k: int) -> None:
    rows_per_chunk = max(1, min(n, SCRATCH_WEIGHTS // k))
    scratch = _Scratch.get(x2.device, x2.dtype, rows_per_chunk * k)
    for first in range(0, n, rows_per_chunk):
        rows = min(rows_per_chunk, n - first)
        w = dequantize_rows(planes, fmt, first, rows, scratch[:rows * k].view(rows, k))
        torch.matmul(x2, w.t(), out=y[:, first:first + rows])


def quant_matmul(x: torch.Tensor, planes: dict, fmt: str, out: torch.Tensor | None = None,
                 tiles: dict | None = None, path: str | None = None) -> torch.Tensor:
    """y = x @ W^T for x [..., K] and W [N, K] held as `fmt` planes (quant_planes_ref: name -> [N, K / per]).
    out, when given, is a [rows of x, N] matrix whose columns are contiguous (it may be a column slice of a wider
    output, as for one part of a merged projection); it is returned. path ("gemv", "dot" or "dense") and tiles
    override the choice by rows of x and that path's tiles (tests, tuning)."""
    n, k = planes["q"].shape[0], planes["q"].shape[1] * PLANES[fmt][0].per
    assert x.shape[-1] == k and all(p.is_contiguous() for p in planes.values())
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = out if out is not None else torch.empty((m, n), dtype=x.dtype, device=x.device)
    assert y.shape == (m, n) and y.stride(-1) == 1
    dot_max = _DOT_MAX_ROWS_8BIT if PLANES[fmt][0].bits == 8 else DOT_MAX_ROWS
    path = path or ("gemv" if m <= GEMV_MAX_ROWS else "dot" if m <= dot_max else "dense")
    if m == 0:
        pass
    elif path == "gemv":
        _gemv(x2, planes, fmt, y, n, k, tiles)
    elif path == "dot":
        quant_dot(x2, planes, fmt, y, _gpu_tiles(x2), tiles)
    else:
        _dense_matmul(x2, planes, fmt, y, n, k)
    return y if out is not None else y.reshape(*x.shape[:-1], n)
