"""Triton fused RMSNorm with optional residual add, fp32 accumulation; its plain-torch reference (the same
arithmetic, and the CPU path) is rmsnorm_ref.rms_norm_ref. Launched as a programmatic dependent (pdl.py) where the
GPU can, the weight read before the wait. With tensor parallelism at one token, the residual add is the sum of the
ranks' partial sums pushed by the row-parallel GEMV before it (kernels/peer_sum.py)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel
from localllm.kernels.peer_sum import PeerSite, sum_of_slots, wait_for_peers


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, eps,
                     stride_x, stride_r, stride_o, stride_ro,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    wait_for_previous_kernel(USE_PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)   # rounded like the reference's x + residual
        tl.store(res_out_ptr + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, 0) / n_cols + eps)
    y = (xf * inv).to(x.dtype).to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, *,
             inplace: bool = False):
    """RMSNorm over the last dim of x [..., N] with weight [N]. Without residual returns normed; with residual
    [..., N] returns (normed, x + residual). inplace=True writes normed into x and x + residual into residual
    (both must then be contiguous in the last dim with rows at a fixed stride) and returns them."""
    n_cols = x.shape[-1]
    assert weight.shape == (n_cols,)
    x2 = x.reshape(-1, n_cols)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    r2 = None
    if residual is not None:
        assert residual.shape == x.shape
        r2 = residual.reshape(-1, n_cols)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
    if inplace:
        assert x2.data_ptr() == x.data_ptr() and (r2 is None or r2.data_ptr() == residual.data_ptr()), \
            "inplace needs x and residual viewable as [rows, N]"
        out2, res_out2 = x2, r2
    else:
        out2 = torch.empty((rows, n_cols), dtype=x.dtype, device=x.device)
        res_out2 = torch.empty((rows, n_cols), dtype=x.dtype, device=x.device) if residual is not None else None
    if rows:
        block = triton.next_power_of_2(n_cols)
        _rms_norm_kernel[(rows,)](
            x2, r2 if r2 is not None else x2, weight, out2, res_out2 if res_out2 is not None else out2,
            n_cols, float(eps), x2.stride(0), r2.stride(0) if r2 is not None else 0, out2.stride(0),
            res_out2.stride(0) if res_out2 is not None else 0,
            HAS_RESIDUAL=residual is not None, BLOCK=block,
            num_warps=min(16, max(1, block // 256)), **pdl_options(x.device),
        )
    if inplace:
        return x if residual is None else (x, residual)
    normed = out2.view(x.shape)
    return normed if residual is None else (normed, res_out2.view(x.shape))


@triton.jit
def _pulled_rms_norm_kernel(slots_ptr, flags_ptr, abandon_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, programs, eps,
                            RANK: tl.constexpr, WORLD: tl.constexpr, ON_GPU: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    wait_for_previous_kernel(USE_PDL)
    wait_for_peers(flags_ptr, abandon_ptr, programs, n_cols, RANK, WORLD, BLOCK_P, ON_GPU)
    x = sum_of_slots(slots_ptr, cols, mask, WORLD, n_cols).to(res_out_ptr.dtype.element_ty)
    tl.store(res_out_ptr + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, 0) / n_cols + eps)
    y = (xf * inv).to(x.dtype).to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def pulled_rms_norm(site: PeerSite, programs: int, weight: torch.Tensor, eps: float, residual: torch.Tensor):
    """(normed, residual) of one row whose residual stream is the sum of the ranks' slots of `site`, pushed by
    `programs` programs on each rank: waits for every rank's partial sum, writes the sum into residual [1, N]
    (rounded to its dtype) and returns its RMSNorm."""
    n_cols = residual.shape[-1]
    assert residual.numel() == n_cols == site.width and residual.is_contiguous() and 0 < programs <= n_cols
    out = torch.empty_like(residual)
    block = triton.next_power_of_2(n_cols)
    _pulled_rms_norm_kernel[(1,)](
        site.slots, site.flags, site.abandon, weight, out, residual, n_cols, programs, float(eps),
        RANK=site.rank, WORLD=site.world, ON_GPU=residual.is_cuda, BLOCK_P=triton.next_power_of_2(programs),
        BLOCK=block, num_warps=min(16, max(1, block // 256)), **pdl_options(residual.device))
    return out, residual
