"""Triton SiLU-and-mul (SwiGLU): [..., 2I] -> [..., I], silu(first half) * second half, computed in fp32 and
rounded where torch's F.silu(gate) * up rounds. Launched as a programmatic dependent (pdl.py) where the GPU can: at
one token a step it then starts while the GEMV before it finishes, and the GEMV after it while it runs.
Its plain-torch reference (and the CPU path) is activation_ref.silu_and_mul_ref."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel
from localllm.kernels.rounding import rounded


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_o, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    wait_for_previous_kernel(USE_PDL)
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + row * stride_o + cols, silu_mul(gate, up, dtype).to(dtype), mask=mask)


@triton.jit
def silu_mul(gate, up, dtype: tl.constexpr):
    """silu(gate) * up in float32, rounded as in dtype: silu rounded before the product, as F.silu(gate) * up
    rounds it (transformers' MLPs). Also the quantized GEMV's epilogue (quant_tiles.store_tile)."""
    return rounded(rounded(gate / (1.0 + tl.exp(-gate)), dtype) * up, dtype)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., 2I] (rows at any stride, last dim contiguous) -> [..., I]; out: optional destination."""
    two_i = x.shape[-1]
    assert two_i % 2 == 0
    n = two_i // 2
    x2 = x.reshape(-1, two_i)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    if out is None:
        out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    out2 = out.view(-1, n)
    if rows:
        block = min(1024, triton.next_power_of_2(n))
        _silu_and_mul_kernel[(rows, triton.cdiv(n, block))](x2, out2, n, x2.stride(0), out2.stride(0), BLOCK=block,
                                                           num_warps=4 if block >= 512 else 1,
                                                           **pdl_options(x.device))
    return out
