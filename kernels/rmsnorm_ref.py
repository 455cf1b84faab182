"""Plain-torch RMSNorm, the reference of rmsnorm.rms_norm and the CPU path of the model's norm layers: residual added
in the input dtype, normalised in fp32, cast back, then scaled by the weight in the input dtype (as transformers'
Llama does, so greedy tokens match it)."""
from __future__ import annotations

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """Returns normed, or (normed, x + residual) when residual is given."""
    if residual is not None:
        residual = x + residual
        x = residual
    dtype = x.dtype
    xf = x.float()
    normed = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    return normed if residual is None else (normed, residual)
