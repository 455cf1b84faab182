"""Triton matmuls over quantized weights in their GPU layout (block_formats.PLANES, quant_planes_ref): y = x @ W^T
with W [N, K] held as planes, the quants of each row in int32 words and the scale fields apart.

- GEMV (decode, up to GEMV_MAX_ROWS rows of x): quant_gemv, x held in registers for a slice of K while row tiles
  stream past, integer dot products (x in fixed point) for every format but FP8.
- Up to DOT_MAX_ROWS (small batches, speculative verify steps, short prompts): quant_gemm's tensor-core kernel,
  which decodes each weight once for all rows of x.
- Above (prefill, large batches): the weight is dequantized by a kernel that streams the planes into a bf16 (x's
  dtype) scratch buffer reused by every layer, in row chunks of at most SCRATCH_WEIGHTS, and multiplied by
  torch.matmul (cuBLAS): the extra write and read of 2 bytes a weight cost far less than a 1,024-token prefill's
  matmuls, which then run at the dense speed.
- FP8 weights from FP8_TENSOR_CORE_ROWS rows of x, where the GPU and cuBLAS multiply fp8 with a scale per 128
  columns: fp8_gemm, x quantized to e4m3 per group of 128 (the checkpoints' dynamic activation scheme), multiplied
  on the FP8 tensor cores.

The block decoders (quant_tiles) read a unit's words and its group's scale fields together; the plain-torch
reference is quant_planes_ref.planes_matmul_ref.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.activation import silu_and_mul
from localllm.kernels.block_formats import PLANES
from localllm.kernels.fp8_gemm import fp8_matmul, fp8_tensor_cores
from localllm.kernels.quant_gemm import quant_dot
from localllm.kernels.quant_gemv import FP8, gates_itself, quant_gemv, quant_gemv_pair
from localllm.kernels.quant_launch import constants, kernel_planes, row_units
from localllm.kernels.quant_tiles import load_units, ordered_weights, unit_columns, unit_weights

# The path by rows of x (scripts/gpu_quant_check.py --paths on one H200, Llama-3.1-8B's gate_up and down): the GEMV
# up to GEMV_MAX_ROWS, or 2 for 8-bit formats (a launch for each two rows: at 4 rows Q4_K's gate_up takes 66 us
# against the tensor-core kernel's 154, Q8_0's 110 against 96), the tensor-core kernel (flat from 1 to 64 rows:
# 1.3-3.6x faster than dequantize + cuBLAS there) up to DOT_MAX_ROWS, or further for 8-bit formats, then
# dequantize + cuBLAS
GEMV_MAX_ROWS = 4
_GEMV_MAX_ROWS_8BIT = 2
DOT_MAX_ROWS = 64
_DOT_MAX_ROWS_8BIT = 256
# FP8 weights take the FP8 tensor cores from this many rows of x, where the GEMV stops (scripts/gpu_quant_check.py
# --paths on one H200: Llama-3.1-8B's gate_up in 49-53 us from 2 to 64 rows against the dot kernel's 99-111, 289
# at 1,024 rows against dequantize + cuBLAS's 568)
FP8_TENSOR_CORE_ROWS = 3
# tests: use the GPU's tile sizes on CPU tensors too (the interpreter otherwise gets small tiles, for speed)
GPU_TILES_EVERYWHERE = False
# the dequantize-then-cuBLAS path's scratch: at most this many weights at a time (256 MB in bf16)
SCRATCH_WEIGHTS = 1 << 27


@triton.jit
def _dequantize_kernel(w_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, index_ptr, first_row, rows_out, K,
                       FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr,
                       UNIT: tl.constexpr, FP8_HW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_U: tl.constexpr,
                       GATHER: tl.constexpr):
    """Rows first_row.. (rows_out of them) of the weight, or with GATHER the rows index[0 .. rows_out) (an
    embedding lookup), dequantized into w [rows_out, K] (its dtype)."""
    out_rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if GATHER:
        plane_rows = tl.load(index_ptr + tl.minimum(out_rows, rows_out - 1)).to(tl.int64)[:, None]
    else:
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


def _gpu_tiles(x: torch.Tensor) -> bool:
    return x.is_cuda or GPU_TILES_EVERYWHERE


class _Scratch:
    """Per device and dtype: the dense weight rows the large-M path multiplies, reused by every layer. A smaller
    one it outgrows is kept, not freed: a CUDA graph captured with it still writes into it when it replays."""
    buffers: dict = {}
    retired: list = []

    @classmethod
    def get(cls, device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
        buffer = cls.buffers.get((device, dtype))
        if buffer is None or buffer.numel() < numel:
            if buffer is not None:
                cls.retired.append(buffer)
            buffer = cls.buffers[(device, dtype)] = torch.empty(numel, dtype=dtype, device=device)
        return buffer


def dequantize_rows(planes: dict, fmt: str, first_row: int, rows: int, out: torch.Tensor,
                    index: torch.Tensor | None = None) -> torch.Tensor:
    """Rows first_row..first_row + rows of the weight, or the rows that index [rows] names (an embedding
    lookup: one launch, where the planes' reference decoding is a few dozen torch operations), dequantized into
    out [rows, K] (contiguous, any float dtype)."""
    k = out.shape[1]
    if rows == 0:
        return out
    block_n, warps = (4, 4) if _gpu_tiles(out) else (32, 1)
    block_u = 32 * warps
    grid = (triton.cdiv(rows, block_n), triton.cdiv(row_units(fmt, k), block_u))
    _dequantize_kernel[grid](out, *kernel_planes(planes, fmt), index if index is not None else out, first_row, rows,
                             k, **constants(fmt, out), BLOCK_N=block_n, BLOCK_U=block_u, GATHER=index is not None,
                             num_warps=warps)
    return out


def _dense_matmul(x2: torch.Tensor, planes: dict, fmt: str, y: torch.Tensor, n: int, k: int) -> None:
    rows_per_chunk = max(1, min(n, SCRATCH_WEIGHTS // k))
    scratch = _Scratch.get(x2.device, x2.dtype, rows_per_chunk * k)
    for first in range(0, n, rows_per_chunk):
        rows = min(rows_per_chunk, n - first)
        w = dequantize_rows(planes, fmt, first, rows, scratch[:rows * k].view(rows, k))
        torch.matmul(x2, w.t(), out=y[:, first:first + rows])


def chosen_path(fmt: str, m: int, n: int, x: torch.Tensor) -> str:
    """quant_matmul's path for m rows of x (on x's device) and a weight of n rows in `fmt`."""
    eight_bit = PLANES[fmt][0].bits == 8
    gemv_max, dot_max = (_GEMV_MAX_ROWS_8BIT, _DOT_MAX_ROWS_8BIT) if eight_bit else (GEMV_MAX_ROWS, DOT_MAX_ROWS)
    # (cuBLAS's fp8 matmuls take whole multiples of 16 rows of W)
    fp8_cores = fmt == FP8 and m >= FP8_TENSOR_CORE_ROWS and n % 16 == 0 and fp8_tensor_cores(x)
    return "gemv" if m <= gemv_max else "fp8" if fp8_cores else "dot" if m <= dot_max else "dense"


def quant_matmul(x: torch.Tensor, planes: dict, fmt: str, out: torch.Tensor | None = None,
                 tiles: dict | None = None, path: str | None = None, packed_x: dict | None = None,
                 gated: bool = False) -> torch.Tensor:
    """y = x @ W^T for x [..., K] and W [N, K] held as `fmt` planes (quant_planes_ref: name -> [N, K / per]).
    out, when given, is a [rows of x, N] matrix whose columns are contiguous (it may be a column slice of a wider
    output, as for one part of a merged projection); it is returned. path ("gemv", "dot", "dense", or "fp8" for
    FP8 weights) and tiles override the choice by rows of x and that path's tiles (tests, tuning). packed_x: a
    dict shared by the calls of the parts of one merged projection, in which x is kept packed (pack_fixed_x) or
    quantized (fp8_gemm.quantize_x) once for all of them. gated (W a merged [gate; up]): y [..., N / 2] =
    silu_and_mul of that, inside the GEMV, after the matmul on the other paths."""
    n, k = planes["q"].shape[0], planes["q"].shape[1] * PLANES[fmt][0].per
    assert x.shape[-1] == k and all(p.is_contiguous() for p in planes.values())
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    path = path or chosen_path(fmt, m, n, x2)
    if gated and not (path == "gemv" and gates_itself(fmt, n, k, x2.device, _gpu_tiles(x2), tiles)):
        return silu_and_mul(quant_matmul(x, planes, fmt, tiles=tiles, path=path, packed_x=packed_x), out)
    n_out = n // 2 if gated else n
    y = out if out is not None else torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    assert y.shape == (m, n_out) and y.stride(-1) == 1
    if m == 0:
        pass
    elif path == "gemv":
        quant_gemv(x2, planes, fmt, y, n, k, _gpu_tiles(x2), tiles, packed_x, gated)
    elif path == "fp8":
        fp8_matmul(x2, planes, y, packed_x)
    elif path == "dot":
        quant_dot(x2, planes, fmt, y, _gpu_tiles(x2), tiles)
    else:
        _dense_matmul(x2, planes, fmt, y, n, k)
    return y if out is not None else y.reshape(*x.shape[:-1], n_out)


def merged_matmul(x2: torch.Tensor, weights: list[tuple[dict, str, torch.Tensor]],
                  packed_x: dict | None = None) -> None:
    """y_i = x2 @ W_i^T into each y_i for the weights (planes, format, y_i) of one merged projection (its parts,
    one a format, y_i column slices of one output): two parts that both take the GEMV in one launch a pair of
    rows of x (quant_gemv_pair), each part by quant_matmul otherwise. packed_x: as quant_matmul's."""
    m = x2.shape[0]
    paired = len(weights) == 2 and m > 0 and all(
        chosen_path(fmt, m, planes["q"].shape[0], x2) == "gemv" for planes, fmt, _ in weights)
    if paired and quant_gemv_pair(x2, weights, x2.shape[1], _gpu_tiles(x2), packed_x):
        return
    for planes, fmt, y in weights:
        quant_matmul(x2, planes, fmt, out=y, packed_x=packed_x)
