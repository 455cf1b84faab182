"""Triton matmuls over quantized weights kept in their block layout (quant_blocks_ref describes the formats):
y = x @ W^T with W [N, K] stored as uint8 rows of blocks, dequantized in registers, never in memory.

- GEMV (decode, up to GEMV_MAX_ROWS rows of x): each program owns BLOCK_N weight rows and walks K once, reading
  every weight byte once; scales are applied per group after the group's dot product (sum(q * x) * scale +
  shift * sum(x)), so the inner loop is one multiply-add per weight. The rows of x are unrolled over the same
  decoded tile.
- GEMM (prefill, larger batches): tiles of x [BLOCK_M, BLOCK_K] against weight tiles decoded to x's dtype
  [BLOCK_N, BLOCK_K], on the tensor cores through tl.dot, fp32 accumulation.

Both decode a tile as [rows, groups, group] (a group shares one scale, quant_blocks_ref.BlockFormat.group), so the
scales are decoded once per group. Byte fields are loaded one byte at a time (blocks of 18, 34 or 210 bytes leave
the float16 fields unaligned). The plain-torch reference is quant_blocks_ref.quant_matmul_ref.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.block_formats import block_format

GEMV_MAX_ROWS = 8
FORMAT_IDS = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2, "Q4_K": 3, "Q5_K": 4, "Q6_K": 5, "int4_g128": 6, "fp8_e4m3_g128": 7}
# tests: use the GPU's tile sizes on CPU tensors too (the interpreter otherwise gets small tiles, for speed)
GPU_TILES_EVERYWHERE = False


@triton.jit
def _byte(ptr, mask):
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _f16(ptr, mask):
    """The little-endian float16 at byte address ptr, as float32."""
    bits = (_byte(ptr, mask) | (_byte(ptr + 1, mask) << 8)).to(tl.uint16)
    return bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _f32(ptr, mask):
    """The little-endian float32 at byte address ptr."""
    bits = _byte(ptr, mask) | (_byte(ptr + 1, mask) << 8) | (_byte(ptr + 2, mask) << 16) | (_byte(ptr + 3, mask) << 24)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _fp8_e4m3(byte):
    """float8_e4m3fn bits (int32 0..255) as float32, built bit by bit (exact; NaN, 0x7f/0xff, is not expected
    in weights): sign, 4 exponent bits of bias 7, 3 mantissa bits; exponent 0 is subnormal (m / 8 * 2^-6)."""
    sign = tl.where((byte & 0x80) != 0, -1.0, 1.0)
    exponent = (byte >> 3) & 15
    mantissa = byte & 7
    normal = ((exponent + 120) << 23) | (mantissa << 20)      # float32 exponent bias 127 = 7 + 120
    magnitude = tl.where(exponent == 0, mantissa.to(tl.float32) * 0.001953125, normal.to(tl.float32, bitcast=True))
    return sign * magnitude


@triton.jit
def _k_scale_min(blk, j, mask):
    """Six-bit scale and min of sub-block j of Q4_K/Q5_K blocks (quant_blocks_ref.k_scales_mins)."""
    low = _byte(blk + 4 + j % 4, mask)
    mid = _byte(blk + 8 + j % 4, mask)
    high = _byte(blk + 12 + j % 4, mask)
    sc = tl.where(j < 4, low & 63, (high & 15) | ((low >> 6) << 4))
    mn = tl.where(j < 4, mid & 63, (high >> 4) | ((mid >> 6) << 4))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _decode(w_ptr, row_off, kk, lane, mask, FMT: tl.constexpr, ELEMS: tl.constexpr, NBYTES: tl.constexpr,
            G: tl.constexpr):
    """Weights of the groups starting at columns kk [1, S, 1] of the rows at byte offsets row_off [R, 1, 1], as
    (q [R, S, G], scale [R, S, 1], shift [R, S, 1]) with w = q * scale + shift. mask [R, S, 1]: groups to read."""
    blk = w_ptr + row_off + (kk // ELEMS) * NBYTES      # [R, S, 1] each group's block
    i0 = kk % ELEMS                                     # [1, S, 1] the group's first weight within its block
    i = i0 + lane                                       # [1, S, G]
    qmask = mask & (lane < G)
    shift = tl.zeros(blk.shape, tl.float32)
    if FMT == 0:    # Q4_0
        scale = _f16(blk, mask)
        q = ((_byte(blk + 2 + i % 16, qmask) >> ((i // 16) * 4)) & 15) - 8
    elif FMT == 1:  # Q4_1
        scale = _f16(blk, mask)
        shift = _f16(blk + 2, mask)
        q = (_byte(blk + 4 + i % 16, qmask) >> ((i // 16) * 4)) & 15
    elif FMT == 2:  # Q8_0
        scale = _f16(blk, mask)
        q = tl.load(blk + 2 + i, mask=qmask, other=0).to(tl.int8, bitcast=True).to(tl.int32)
    elif FMT == 3 or FMT == 4:  # Q4_K, Q5_K: 8 sub-blocks of 32, 6-bit scales and mins
        j = i0 // 32
        sc, mn = _k_scale_min(blk, j, mask)
        scale = _f16(blk, mask) * sc
        shift = -(_f16(blk + 2, mask) * mn)
        if FMT == 3:
            q = (_byte(blk + 16 + (j // 2) * 32 + lane, qmask) >> ((j % 2) * 4)) & 15
        else:
            low = (_byte(blk + 48 + (j // 2) * 32 + lane, qmask) >> ((j % 2) * 4)) & 15
            q = low | (((_byte(blk + 16 + lane, qmask) >> j) & 1) << 4)
    elif FMT == 5:  # Q6_K: 16 groups of 16, int8 scales
        scale = _f16(blk + 208, mask) * tl.load(blk + 192 + i0 // 16, mask=mask, other=0).to(
            tl.int8, bitcast=True).to(tl.float32)
        half = i // 128
        r = i % 128
        low = (_byte(blk + half * 64 + r % 64, qmask) >> ((r // 64) * 4)) & 15
        high = (_byte(blk + 128 + half * 32 + r % 32, qmask) >> ((r // 32) * 2)) & 3
        q = (low | (high << 4)) - 32
    elif FMT == 6:  # int4_g128
        scale = _f16(blk, mask)
        q = ((_byte(blk + 4 + i % 64, qmask) >> ((i // 64) * 4)) & 15) - _byte(blk + 2, mask)
    else:           # fp8_e4m3_g128
        scale = _f32(blk, mask)
        q = _fp8_e4m3(_byte(blk + 4 + i, qmask))
    return q.to(tl.float32), scale, shift


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_ym, row_bytes,
                 FMT: tl.constexpr, ELEMS: tl.constexpr, NBYTES: tl.constexpr, G: tl.constexpr,
                 S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = (rows < N)[:, None, None]
    row_off = (rows.to(tl.int64) * row_bytes)[:, None, None]
    groups = tl.arange(0, S)[None, :, None] * G
    lane = tl.arange(0, G)[None, None, :]
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, S * G):
        kk = k0 + groups
        k_ok = kk < K
        q, scale, shift = _decode(w_ptr, row_off, kk, lane, row_ok & k_ok, FMT, ELEMS, NBYTES, G)
        for m in tl.static_range(BLOCK_M):
            # rows past M repeat the last one (cached); their results are not stored
            x_row = x_ptr + tl.minimum(M - 1, m) * stride_xm
            xm = tl.load(x_row + kk + lane, mask=k_ok & (lane < G), other=0.0).to(tl.float32)
            dots = tl.sum(q * xm, 2, keep_dims=True)                      # [BLOCK_N, S, 1]
            per_group = dots * scale + shift * tl.sum(xm, 2, keep_dims=True)
            acc += tl.where(offs_m[:, None] == m, tl.sum(tl.sum(per_group, 2), 1)[None, :], 0.0)
    y_mask = (offs_m[:, None] < M) & (rows[None, :] < N)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + rows[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@triton.jit(do_not_specialize=["M"])
def _gemm_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_ym, row_bytes,
                 FMT: tl.constexpr, ELEMS: tl.constexpr, NBYTES: tl.constexpr, G: tl.constexpr,
                 S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    # grouped ordering: GROUP_M row tiles of x share each weight tile while it is in L2
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = (rows < N)[:, None, None]
    row_off = (rows.to(tl.int64) * row_bytes)[:, None, None]
    groups = tl.arange(0, S)[None, :, None] * G
    lane = tl.arange(0, G)[None, None, :]
    offs_k = tl.arange(0, S * G)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, S * G):
        kk = k0 + groups
        q, scale, shift = _decode(w_ptr, row_off, kk, lane, row_ok & (kk < K), FMT, ELEMS, NBYTES, G)
        w = tl.reshape(q * scale + shift, (BLOCK_N, S * G)).to(x_ptr.dtype.element_ty)
        x = tl.load(x_rows + k0 + offs_k[None, :], mask=(offs_m[:, None] < M) & (k0 + offs_k[None, :] < K),
                    other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    y_mask = (offs_m[:, None] < M) & (rows[None, :] < N)
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + rows[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=y_mask)


def _gpu_tiles(x: torch.Tensor) -> bool:
    return x.is_cuda or GPU_TILES_EVERYWHERE


def gemv_config(fmt: str, m: int, gpu: bool) -> dict:
    """Tile of the GEMV: BLOCK_N rows by S groups (S * group = 256 weights per step on the GPU)."""
    group = block_format(fmt).group
    if not gpu:
        return dict(BLOCK_N=4, S=64 // group, BLOCK_M=triton.next_power_of_2(m), num_warps=1)
    return dict(BLOCK_N=8, S=256 // group, BLOCK_M=triton.next_power_of_2(m), num_warps=4)


def gemm_config(fmt: str, m: int, gpu: bool) -> dict:
    group = block_format(fmt).group
    if not gpu:
        return dict(BLOCK_M=16, BLOCK_N=16, S=64 // group, GROUP_M=4, num_warps=1)
    if m <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, S=64 // group, GROUP_M=8, num_warps=4, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=128, S=64 // group, GROUP_M=8, num_warps=8, num_stages=3)


def quant_matmul(x: torch.Tensor, weight: torch.Tensor, fmt: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W^T for x [..., K] and W [N, K] held as `fmt` blocks, weight uint8 [N, K / elems * nbytes]
    (contiguous). out, when given, is a [rows of x, N] matrix whose columns are contiguous (it may be a column
    slice of a wider output, as for one part of a merged projection); it is returned."""
    f = block_format(fmt)
    n, k = weight.shape[0], weight.shape[1] // f.nbytes * f.elems
    assert weight.dtype == torch.uint8 and weight.is_contiguous() and x.shape[-1] == k
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = out if out is not None else torch.empty((m, n), dtype=x.dtype, device=x.device)
    assert y.shape == (m, n) and y.stride(-1) == 1
    if m == 0:
        return y if out is not None else y.reshape(*x.shape[:-1], n)
    common = dict(FMT=FORMAT_IDS[fmt], ELEMS=f.elems, NBYTES=f.nbytes, G=f.group)
    args = (x2, weight, y, m, n, k, x2.stride(0), y.stride(0), weight.stride(0))
    if m <= GEMV_MAX_ROWS:
        config = gemv_config(fmt, m, _gpu_tiles(x))
        _gemv_kernel[(triton.cdiv(n, config["BLOCK_N"]),)](*args, **common, **config)
    else:
        config = gemm_config(fmt, m, _gpu_tiles(x))
        grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
        precision = "ieee" if x.dtype == torch.float32 else "tf32"
        _gemm_kernel[grid](*args, **common, **config, DOT_PRECISION=precision)
    return y if out is not None else y.reshape(*x.shape[:-1], n)
