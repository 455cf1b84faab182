"""Triton matmul over quantized weight planes for a few to a few dozen rows of x (a small batch, a speculative
verify step, a short prompt): y = x @ W^T on the tensor cores.

A program owns BLOCK_M rows of x and BLOCK_N weight rows. For each BLOCK_U groups of K it decodes the weight tile
into registers (quant_tiles.ordered_weights: exactly the values of the reference's dequantization, rounded to x's
dtype, as the reference rounds them) and multiplies it with the matching columns of x (tl.dot), so decoding costs
the same for 2 rows of x as for 64; the GEMV decodes once per row of x it multiplies. A thread reads a whole group
of words (its unit is the group, where the GEMV's is 16 bytes), so the tile's weights, put in order in registers,
are consecutive columns, and x's columns are read as they lie. K is split over programs when the output tiles are
too few to fill the GPU (quant_tiles.store_tile adds the parts up).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.block_formats import block_format
from localllm.kernels.quant_launch import SplitWorkspace, constants, group_words, kernel_planes, sm_count
from localllm.kernels.quant_tiles import load_units, ordered_weights, store_tile

# the dot kernel splits K until it has about this many programs per SM
PROGRAMS_PER_SM = 2


@triton.jit(do_not_specialize=["M"])
def _dot_kernel(x_ptr, y_ptr, partial_ptr, arrivals_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr,
                M, N, K, stride_xm, stride_ym, units_per_split, SPLIT,
                FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr,
                FP8_HW: tl.constexpr, F32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_U: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    plane_rows = tl.minimum(rows, N - 1).to(tl.int64)[:, None]      # rows past N: not stored
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    x_rows = x_ptr + tl.minimum(ms, M - 1).to(tl.int64)[:, None] * stride_xm
    first = pid_k * units_per_split
    last = tl.minimum(K // G, first + units_per_split)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for u0 in range(first, last, BLOCK_U):
        units = u0 + tl.arange(0, BLOCK_U)
        ok = units < last
        words, high, scale, shift = load_units(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, plane_rows, units[None, :],
                                               ok[None, :], K, FMT, BITS, A_PER, G, UNIT)
        w = ordered_weights(words, high, scale, shift, FMT, BITS, FP8_HW).to(x_ptr.dtype.element_ty)
        # a unit is a whole group here, so the tile's columns are x's u0 * G.. in order
        cols = u0 * G + tl.arange(0, BLOCK_U * G)
        x = tl.load(x_rows + cols[None, :], mask=(cols < last * G)[None, :], other=0.0)
        if F32_DOT:     # full-precision float32 products of the rounded weights (the same as the tensor cores'
            # bf16 products, which are exact)
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    store_tile(acc, y_ptr, partial_ptr, arrivals_ptr, ms, rows, M, N, stride_ym, pid_m * tl.num_programs(1) + pid_n,
               pid_k, SPLIT)


def dot_config(fmt: str, m: int, n: int, k: int, device: torch.device, gpu: bool, tiles: dict | None = None) -> dict:
    """Tile of the dot kernel: BLOCK_M rows of x (16 at least: the tensor cores' smallest), BLOCK_N weight rows,
    BLOCK_U units of K (128 weights) a step; SPLIT programs along K when the output tiles are too few."""
    block_m = max(16, triton.next_power_of_2(m)) if gpu else max(2, triton.next_power_of_2(m))
    if gpu:
        config = dict(BLOCK_M=min(block_m, 64), BLOCK_N=128, BLOCK_U=128 // block_format(fmt).group, num_warps=4,
                      num_stages=1)
    else:     # the interpreter: few programs
        config = dict(BLOCK_M=min(block_m, 64), BLOCK_N=32, BLOCK_U=2, num_warps=1)
    config.update(tiles or {})
    if "SPLIT" not in config:
        tiles_mn = triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"])
        steps = triton.cdiv(k // block_format(fmt).group, config["BLOCK_U"])
        config["SPLIT"] = max(1, min(steps, PROGRAMS_PER_SM * sm_count(device) // tiles_mn))
    return config


def quant_dot(x2: torch.Tensor, planes: dict, fmt: str, y: torch.Tensor, gpu: bool, tiles: dict | None = None) -> None:
    """y [M, N] = x2 [M, K] @ W^T through _dot_kernel (y's columns contiguous). Off a GPU (Triton's interpreter,
    whose bfloat16 tl.dot returns garbage) and for float32 x the products are float32's."""
    m, n, k = x2.shape[0], planes["q"].shape[0], x2.shape[1]
    config = dot_config(fmt, m, n, k, x2.device, gpu, tiles)
    block_m, block_n, block_u, split = (config.pop(name) for name in ("BLOCK_M", "BLOCK_N", "BLOCK_U", "SPLIT"))
    units = k // block_format(fmt).group
    units_per_split = triton.cdiv(triton.cdiv(units, block_u), split) * block_u
    split = triton.cdiv(units, units_per_split)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split)
    partial, arrivals = SplitWorkspace.get(x2.device, grid[0] * grid[1] * split * block_m * block_n, grid[0] * grid[1])
    _dot_kernel[grid](x2, y, partial, arrivals, *kernel_planes(planes, fmt), m, n, k, x2.stride(0), y.stride(0),
                      units_per_split, split, **dict(constants(fmt, x2), UNIT=group_words(fmt)),
                      F32_DOT=x2.dtype == torch.float32 or not x2.is_cuda,
                      BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_U=block_u, **config)
