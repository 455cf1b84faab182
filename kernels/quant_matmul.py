"""Triton matmuls over quantized weights in their GPU layout (block_formats.PLANES, quant_planes_ref): y = x @ W^T
with W [N, K] held as planes, the quants of each row in int32 words and the scale fields apart.

- GEMV (decode, up to GEMV_MAX_ROWS rows of x): a program owns BLOCK_N weight rows and a range of K; it loads
  [BLOCK_N, BLOCK_W] words of the quant plane (consecutive lanes, consecutive words of a row: 16-byte vector loads),
  decodes them in registers ([BLOCK_N, BLOCK_W, weights per word]), and applies each word's scale after its dot
  product with x (sum(q * x) * scale + shift * sum(x)). When the row tiles are too few to give every SM work (o_proj,
  down_proj at batch 1) K is split over SPLIT programs: each writes its partial sums to a workspace and the last to
  finish a row tile (an atomic counter per tile, reset by that program) adds them in order and stores y, so the
  split costs no extra launch and the result does not depend on timing.
- Above GEMV_MAX_ROWS (prefill, large batches): the weight is dequantized by a kernel that streams the planes at
  bandwidth into a bf16 (x's dtype) scratch buffer reused by every layer, in row chunks of at most SCRATCH_WEIGHTS,
  and multiplied by torch.matmul (cuBLAS): the extra write and read of 2 bytes a weight cost far less than a
  1,024-token prefill's matmuls, which then run at the dense speed.

Integer quants become float32 with the exponent trick ((q | 0x4B000000) as float32 - 2^23, exact below 2^23): two
integer and one float instruction, where a conversion instruction has a quarter of their throughput. The plain-torch
reference is quant_planes_ref.planes_matmul_ref.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from localllm.kernels.block_formats import PLANES, block_format

GEMV_MAX_ROWS = 8
_K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
FORMAT_IDS = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2, "Q4_K": 3, "Q5_K": 4, "Q6_K": 5, "int4_g128": 6, "fp8_e4m3_g128": 7}
# tests: use the GPU's tile sizes on CPU tensors too (the interpreter otherwise gets small tiles, for speed)
GPU_TILES_EVERYWHERE = False
# the dequantize-then-cuBLAS path's scratch: at most this many weights at a time (256 MB in bf16)
SCRATCH_WEIGHTS = 1 << 27
# the GEMV splits K until it has about this many programs per SM
PROGRAMS_PER_SM = 4
_MAGIC = tl.constexpr(8388608.0)      # 2^23


@triton.jit
def _small_int_f32(u, bias: tl.constexpr):
    """int32 u in [0, 2^23) -> float32 u - bias, exactly."""
    return (u | 0x4B000000).to(tl.float32, bitcast=True) - (_MAGIC + bias)


@triton.jit
def _fp8_e4m3(byte, HW: tl.constexpr):
    """float8_e4m3fn bits (int32 0..255) as float32. HW: the GPU's conversion (Hopper, Ada); otherwise built bit
    by bit (exact, and what Triton's interpreter runs): sign, 4 exponent bits of bias 7, 3 mantissa bits, exponent
    0 subnormal (m / 8 * 2^-6). NaN (0x7f / 0xff) is not expected in weights."""
    if HW:
        return byte.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)
    sign = tl.where((byte & 0x80) != 0, -1.0, 1.0)
    exponent = (byte >> 3) & 15
    mantissa = byte & 7
    normal = ((exponent + 120) << 23) | (mantissa << 20)      # float32 exponent bias 127 = 7 + 120
    magnitude = tl.where(exponent == 0, mantissa.to(tl.float32) * 0.001953125, normal.to(tl.float32, bitcast=True))
    return sign * magnitude


@triton.jit
def _load_tile(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, rows, wi, mask, K, KW,
               FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr):
    """Words wi [1, W] of the quant plane for rows [R, 1] (int64), with what their weights share: (words, high,
    scale, shift), each [R, W], w = q * scale + shift. high: the word of Q5_K / Q6_K high bits covering each word
    (the words again otherwise). Plane a is each format's per-group scale field (d, or sc for the K-quants), b its
    second one (m, mn, zero), d / e the K-quants' d / dmin per 256 weights (quant_planes_ref names them). mask
    [1, W]: the words to read (KW = K / weights a word)."""
    EPW: tl.constexpr = 32 // BITS
    words = tl.load(q_ptr + rows * KW + wi, mask=mask, other=0)
    group = rows * (K // A_PER) + wi * EPW // A_PER
    scale = tl.load(a_ptr + group, mask=mask, other=0).to(tl.float32)
    shift = tl.zeros(scale.shape, tl.float32)
    high = words
    if FMT == 1:    # Q4_1: d * q + m
        shift = tl.load(b_ptr + group, mask=mask, other=0).to(tl.float32)
    elif FMT == 6:  # int4_g128: (q - zero) * d
        shift = -(tl.load(b_ptr + group, mask=mask, other=0).to(tl.float32) * scale)
    elif FMT >= 3 and FMT <= 5:   # K-quants: d per 256 weights times a small integer scale per group
        superblock = rows * (K // 256) + wi * EPW // 256
        scale = scale * tl.load(d_ptr + superblock, mask=mask, other=0).to(tl.float32)
        if FMT == 5:    # Q6_K: one word of 2-bit highs per 16 weights
            high = tl.load(qh_ptr + rows * (K // 16) + wi // 2, mask=mask, other=0)
        else:
            if FMT == 4:    # Q5_K: one word of fifth bits per 32 weights
                high = tl.load(qh_ptr + rows * (K // 32) + wi // 4, mask=mask, other=0)
            dmin = tl.load(e_ptr + superblock, mask=mask, other=0).to(tl.float32)
            shift = -(dmin * tl.load(b_ptr + group, mask=mask, other=0).to(tl.float32))
    return words, high, scale, shift


@triton.jit
def _quants(words, high, wi, j: tl.constexpr, FMT: tl.constexpr, BITS: tl.constexpr, FP8_HW: tl.constexpr):
    """The quants (float32, their format's constant offset taken off) at bits j * BITS of words [R, W]: weight
    j * C + c of the group whose word c it is (C words a group, block_formats.Plane)."""
    field = (words >> (j * BITS)) & ((1 << BITS) - 1)
    if FMT == 0:    # Q4_0: q - 8
        q = _small_int_f32(field, 8)
    elif FMT == 2:  # Q8_0: int8
        q = _small_int_f32(field ^ 0x80, 128)
    elif FMT == 4:  # Q5_K: the fifth bit of weight 4 j + c at bit 4 j + c
        q = _small_int_f32(field | (((high >> (4 * j + wi % 4)) & 1) << 4), 0)
    elif FMT == 5:  # Q6_K: q6 - 32; the top bits of weight 2 j + c at bits 2 (2 j + c)
        q = _small_int_f32(field | (((high >> (4 * j + 2 * (wi % 2))) & 3) << 4), 32)
    elif FMT == 7:
        q = _fp8_e4m3(field, FP8_HW)
    else:
        q = _small_int_f32(field, 0)
    return q


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(x_ptr, y_ptr, partial_ptr, arrivals_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr,
                 M, N, K, KW, stride_xm, stride_ym, words_per_split, SPLIT,
                 FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr, FP8_HW: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_M: tl.constexpr):
    EPW: tl.constexpr = 32 // BITS
    C: tl.constexpr = G // EPW
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # rows past N read row N - 1 (no row mask on the loads); their results are not stored
    plane_rows = tl.minimum(rows, N - 1).to(tl.int64)[:, None]
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_words = tl.zeros([BLOCK_N, BLOCK_W], tl.float32)     # one row of x: reduced over words once, at the end
    first = pid_k * words_per_split
    last = tl.minimum(KW, first + words_per_split)
    for w0 in range(first, last, BLOCK_W):
        wi = tl.max_contiguous(tl.multiple_of(w0 + tl.arange(0, BLOCK_W), BLOCK_W), BLOCK_W)
        k_ok = wi < last
        words, high, scale, shift = _load_tile(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, plane_rows, wi[None, :],
                                               k_ok[None, :], K, KW, FMT, BITS, A_PER)
        x_cols = (wi // C) * G + wi % C         # the column of x meeting bits 0.. of each word
        for m in tl.static_range(BLOCK_M):
            # rows of x past M repeat the last one (cached); their results are not stored
            x_row = x_ptr + tl.minimum(M - 1, m) * stride_xm + x_cols
            dots = tl.zeros([BLOCK_N, BLOCK_W], tl.float32)
            x_sum = tl.zeros([BLOCK_W], tl.float32)
            for j in tl.static_range(EPW):
                xj = tl.load(x_row + j * C, mask=k_ok, other=0.0).to(tl.float32)
                dots += _quants(words, high, wi[None, :], j, FMT, BITS, FP8_HW) * xj[None, :]
                x_sum += xj
            per_word = dots * scale + shift * x_sum[None, :]
            if BLOCK_M == 1:
                acc_words += per_word
            else:
                acc += tl.where(offs_m[:, None] == m, tl.sum(per_word, 1)[None, :], 0.0)
    if BLOCK_M == 1:
        acc = tl.sum(acc_words, 1)[None, :]
    y_mask = (offs_m[:, None] < M) & (rows[None, :] < N)
    y_offs = offs_m[:, None] * stride_ym + rows[None, :]
    if SPLIT == 1:
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        tile = (pid_n * SPLIT * BLOCK_M + offs_m[:, None]) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tl.store(partial_ptr + tile + pid_k * BLOCK_M * BLOCK_N, acc)
        tl.debug_barrier()      # every thread's partial is written before the arrival is counted (acq_rel)
        if tl.atomic_add(arrivals_ptr + pid_n, 1) == SPLIT - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for s in range(SPLIT):
                total += tl.load(partial_ptr + tile + s * BLOCK_M * BLOCK_N, cache_modifier=".cg")
            tl.store(y_ptr + y_offs, total.to(y_ptr.dtype.element_ty), mask=y_mask)
            tl.atomic_xchg(arrivals_ptr + pid_n, 0)


@triton.jit
def _dequantize_kernel(w_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, first_row, rows_out, K, KW,
                       FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr,
                       FP8_HW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    """Rows first_row.. (rows_out of them) of the weight, dequantized into w [rows_out, K] (its dtype)."""
    EPW: tl.constexpr = 32 // BITS
    C: tl.constexpr = G // EPW
    out_rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    plane_rows = (first_row + tl.minimum(out_rows, rows_out - 1)).to(tl.int64)[:, None]
    wi = tl.max_contiguous(tl.multiple_of(tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W), BLOCK_W), BLOCK_W)
    k_ok = wi < KW
    words, high, scale, shift = _load_tile(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, plane_rows, wi[None, :],
                                           k_ok[None, :], K, KW, FMT, BITS, A_PER)
    out = w_ptr + out_rows.to(tl.int64)[:, None] * K + ((wi // C) * G + wi % C)[None, :]
    mask = (out_rows < rows_out)[:, None] & k_ok[None, :]
    for j in tl.static_range(EPW):
        w = _quants(words, high, wi[None, :], j, FMT, BITS, FP8_HW) * scale + shift
        tl.store(out + j * C, w.to(w_ptr.dtype.element_ty), mask=mask)


def _kernel_planes(planes: dict, fmt: str) -> tuple:
    """The planes in the kernels' argument order q, qh, a, b, d, e (_load_tile; an absent one is q again)."""
    q = planes["q"]
    kquant = fmt in _K_QUANTS
    b = planes.get("m", planes.get("mn", planes.get("zero", q)))
    return q, planes.get("qh", q), planes[_a_plane(fmt)], b, planes["d"] if kquant else q, planes.get("dmin", q)


def _a_plane(fmt: str) -> str:
    return "sc" if fmt in _K_QUANTS else "d"


def _constants(fmt: str, x: torch.Tensor) -> dict:
    specs = {p.name: p for p in PLANES[fmt]}
    fp8_hw = x.is_cuda and _capability(x.device) >= (8, 9)
    return dict(FMT=FORMAT_IDS[fmt], BITS=specs["q"].bits, A_PER=specs[_a_plane(fmt)].per,
                G=block_format(fmt).group, FP8_HW=fp8_hw)


def _gpu_tiles(x: torch.Tensor) -> bool:
    return x.is_cuda or GPU_TILES_EVERYWHERE


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def gemv_config(fmt: str, m: int, n: int, k: int, device: torch.device, gpu: bool,
                tiles: dict | None = None) -> dict:
    """Tile of the GEMV: BLOCK_N rows by BLOCK_W words a step (tiles, when given, overrides them), and SPLIT
    programs along K when the row tiles are too few to give every SM PROGRAMS_PER_SM of them."""
    if gpu:   # 16-byte loads. At one row of x, the best of scripts/gpu_quant_check.py's sweep on one H200 at the
        # 8B's shapes: 16 rows x 32 words for 4-bit formats, x 64 for 8-bit ones (Q4_K gate_up 137 us against 203
        # at 32 x 32); at several rows, 8 x 64 (each row of x decodes the words again: fewer rows, fewer registers)
        if m == 1:
            config = dict(BLOCK_N=16, BLOCK_W=32 if PLANES[fmt][0].bits == 4 else 64, num_warps=4)
        else:
            config = dict(BLOCK_N=8, BLOCK_W=64, num_warps=4)
    else:     # the interpreter: few programs (its cost is per operation, whatever the tile)
        config = dict(BLOCK_N=32, BLOCK_W=8, num_warps=1)
    config.update(tiles or {})
    if "SPLIT" not in config:
        row_tiles = triton.cdiv(n, config["BLOCK_N"])
        steps = triton.cdiv(k // (32 // PLANES[fmt][0].bits), config["BLOCK_W"])
        config["SPLIT"] = max(1, min(steps, PROGRAMS_PER_SM * _sm_count(device) // row_tiles))
    return config


class _SplitWorkspace:
    """Per device: the GEMV's split-K partial sums and per-row-tile arrival counters (zero between calls: the
    last program of a tile resets its counter). Grown, never shrunk; sized once for the largest split seen."""
    buffers: dict = {}

    @classmethod
    def get(cls, device: torch.device, partials: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        partial, arrivals = cls.buffers.get(device, (None, None))
        if partial is None or partial.numel() < partials or arrivals.numel() < tiles:
            partial = torch.empty(max(partials, 1 << 20), dtype=torch.float32, device=device)
            arrivals = torch.zeros(max(tiles, 1 << 14), dtype=torch.int32, device=device)
            cls.buffers[device] = (partial, arrivals)
        return partial, arrivals


def _gemv(x2: torch.Tensor, planes: dict, fmt: str, y: torch.Tensor, n: int, k: int, tiles: dict | None) -> None:
    m = x2.shape[0]
    config = gemv_config(fmt, m, n, k, x2.device, _gpu_tiles(x2), tiles)
    block_n, block_w, split = config.pop("BLOCK_N"), config.pop("BLOCK_W"), config.pop("SPLIT")
    kw = planes["q"].shape[1]
    steps = triton.cdiv(kw, block_w)
    words_per_split = triton.cdiv(steps, split) * block_w
    split = triton.cdiv(kw, words_per_split)
    row_tiles = triton.cdiv(n, block_n)
    block_m = triton.next_power_of_2(m)
    partial, arrivals = _SplitWorkspace.get(x2.device, row_tiles * split * block_m * block_n, row_tiles)
    _gemv_kernel[(row_tiles, split)](
        x2, y, partial, arrivals, *_kernel_planes(planes, fmt), m, n, k, kw, x2.stride(0), y.stride(0),
        words_per_split, split, **_constants(fmt, x2), BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_M=block_m, **config)


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
    kw = planes["q"].shape[1]
    k = out.shape[1]
    block_n, block_w, warps = (32, 64, 4) if _gpu_tiles(out) else (32, 16, 1)
    grid = (triton.cdiv(rows, block_n), triton.cdiv(kw, block_w))
    _dequantize_kernel[grid](out, *_kernel_planes(planes, fmt), first_row, rows, k, kw, **_constants(fmt, out),
                             BLOCK_N=block_n, BLOCK_W=block_w, num_warps=warps)
    return out


def _dense_matmul(x2: torch.Tensor, planes: dict, fmt: str, y: torch.Tensor, n: int, k: int) -> None:
    rows_per_chunk = max(1, min(n, SCRATCH_WEIGHTS // k))
    scratch = _Scratch.get(x2.device, x2.dtype, rows_per_chunk * k)
    for first in range(0, n, rows_per_chunk):
        rows = min(rows_per_chunk, n - first)
        w = dequantize_rows(planes, fmt, first, rows, scratch[:rows * k].view(rows, k))
        torch.matmul(x2, w.t(), out=y[:, first:first + rows])


def quant_matmul(x: torch.Tensor, planes: dict, fmt: str, out: torch.Tensor | None = None,
                 gemv_tiles: dict | None = None) -> torch.Tensor:
    """y = x @ W^T for x [..., K] and W [N, K] held as `fmt` planes (quant_planes_ref: name -> [N, K / per]).
    out, when given, is a [rows of x, N] matrix whose columns are contiguous (it may be a column slice of a wider
    output, as for one part of a merged projection); it is returned. gemv_tiles overrides gemv_config (tuning)."""
    n, k = planes["q"].shape[0], planes["q"].shape[1] * PLANES[fmt][0].per
    assert x.shape[-1] == k and all(p.is_contiguous() for p in planes.values())
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = out if out is not None else torch.empty((m, n), dtype=x.dtype, device=x.device)
    assert y.shape == (m, n) and y.stride(-1) == 1
    if m == 0:
        pass
    elif m <= GEMV_MAX_ROWS:
        _gemv(x2, planes, fmt, y, n, k, gemv_tiles)
    else:
        _dense_matmul(x2, planes, fmt, y, n, k)
    return y if out is not None else y.reshape(*x.shape[:-1], n)
