"""FP8 weights (fp8_e4m3_g128 planes) on the FP8 tensor cores, for prefill and large batches: x is quantized to
e4m3 per row and group of 128 columns (scale = the group's largest magnitude / 448, the dynamic activation scheme
that FP8 checkpoints name) by a Triton kernel, and cuBLAS multiplies the two with a scale per 128 columns of each
(torch._scaled_mm's 1x128 by 1x128 block scaling, CUDA 12.9 and later on Hopper). On an H200, Llama-3.1-8B's
gate_up at 1,024 rows of x takes 289 us this way (x's quantization included), against 308 for bf16 weights through
cuBLAS and 568 for the weight dequantized to bf16 first; at 2 to 64 rows 49-53 us, half the dot kernel's time.

The weight's quant plane is read as the fp8 matrix it is, in its stored column order: within each group of 32
weights byte 4c + j holds weight 8j + c (block_formats.Plane), so x's quantized columns are stored in that order too
and the products meet as in y = x @ W^T. The plain-torch reference is fp8_gemm_ref.fp8_matmul_ref;
fp8_gemm_ref.block_scaled_mm_ref is what the cuBLAS call computes.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from localllm.kernels.quant_launch import capability, converts_e4m3
from localllm.kernels.rounding import E4M3_MAX, to_e4m3

GROUP = 128
# cuBLAS's block-scaled fp8 matmul refuses (CUBLAS_STATUS_NOT_SUPPORTED) an x whose rows are no multiple of 16
# (the scales' leading dimension), so x is quantized into that many rows and the product's extra rows dropped
ROW_MULTIPLE = 16
_SCALING_ERRORS = (RuntimeError, ValueError, NotImplementedError)


def fp8_tensor_cores(x: torch.Tensor) -> bool:
    """Whether x's device multiplies float8 e4m3 with a scale per 128 columns on its tensor cores: Hopper and
    later, with a cuBLAS that has this scaling (tried once per device)."""
    return x.is_cuda and capability(x.device) >= (9, 0) and _block_scaling_works(x.device)


@functools.cache
def _block_scaling_works(device: torch.device) -> bool:
    x8 = torch.zeros((16, GROUP), dtype=torch.float8_e4m3fn, device=device)
    scales = torch.ones((1, 16), device=device)
    try:
        torch._scaled_mm(x8, x8.t(), scale_a=scales.t(), scale_b=scales, out_dtype=torch.bfloat16)
    except _SCALING_ERRORS:
        return False
    return True


@triton.jit
def _quantize_x_kernel(x_ptr, x8_ptr, xs_ptr, M, M_PADDED, K, stride_xm, HW: tl.constexpr, BLOCK_G: tl.constexpr):
    """BLOCK_G groups of 128 columns of one row of x -> their e4m3 values (in the weight plane's column order) and
    float32 scales (stored group by group: xs [K / 128, M_PADDED]); rows M.. of the padding are zeros."""
    row = tl.program_id(0).to(tl.int64)
    groups = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = groups < K // 128
    cols = groups[:, None] * 128 + tl.arange(0, 128)[None, :]
    real = ok & (groups * 0 + row < M)
    x = tl.load(x_ptr + row * stride_xm + cols, mask=real[:, None], other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), 1)
    scale = tl.where(amax > 0, tl.math.div_rn(amax, E4M3_MAX), 1.0)
    values = to_e4m3(tl.math.div_rn(x, scale[:, None]), HW)
    within = cols % 32
    stored = cols - within + within % 8 * 4 + within // 8
    tl.store(x8_ptr + row * K + stored, values, mask=ok[:, None])
    tl.store(xs_ptr + groups * M_PADDED + row, scale, mask=ok)


def quantize_x(x2: torch.Tensor, packed: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [M, K] (columns contiguous) -> (float8_e4m3fn [P, K] in the weight plane's column order, float32 scales
    [P, K / 128], a view of a [K / 128, P] tensor: the layout cuBLAS takes), P = M rounded up to ROW_MULTIPLE, the
    padding rows zeros of scale 1. packed: where the parts of one merged projection keep them, to quantize x once
    for all."""
    if packed is not None and "fp8" in packed:
        return packed["fp8"]
    m, k = x2.shape
    padded = triton.cdiv(m, ROW_MULTIPLE) * ROW_MULTIPLE
    x8 = torch.empty((padded, k), dtype=torch.float8_e4m3fn, device=x2.device)
    scales = torch.empty((k // GROUP, padded), dtype=torch.float32, device=x2.device)
    block_g = 8 if x2.is_cuda else 2
    _quantize_x_kernel[(padded, triton.cdiv(k // GROUP, block_g))](
        x2, x8, scales, m, padded, k, x2.stride(0), HW=converts_e4m3(x2), BLOCK_G=block_g,
        num_warps=4 if x2.is_cuda else 1)
    quantized = x8, scales.t()
    if packed is not None:
        packed["fp8"] = quantized
    return quantized


def fp8_matmul(x2: torch.Tensor, planes: dict, y: torch.Tensor, packed: dict | None = None) -> None:
    """y [M, N] (columns contiguous) = x2 [M, K] @ W^T for W held as fp8_e4m3_g128 planes, on the FP8 tensor cores
    (fp8_tensor_cores(x2) must hold)."""
    m, k = x2.shape
    n = planes["q"].shape[0]
    assert k % GROUP == 0 and planes["q"].shape[1] * 4 == k and y.shape == (m, n)
    x8, x_scales = quantize_x(x2, packed)
    # the weight's scales as cuBLAS takes them, [K / 128, N] (a copy of 1/32 of the weight's bytes, each call)
    w_scales = planes["d"].t().contiguous()
    w8 = planes["q"].view(torch.float8_e4m3fn).t()
    if y.is_contiguous() and x8.shape[0] == m:     # no padding rows: straight into y
        torch._scaled_mm(x8, w8, scale_a=x_scales, scale_b=w_scales, out_dtype=y.dtype, out=y)
    else:
        y.copy_(torch._scaled_mm(x8, w8, scale_a=x_scales, scale_b=w_scales, out_dtype=y.dtype)[:m])
