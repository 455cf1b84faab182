"""Plain torch for gemv.gemv: the unfused ops a decoder layer runs (RMSNorm or SiLU-and-mul, the projection with its
bias, the residual add), each rounding to the input dtype as it does on its own."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from localllm.kernels.activation_ref import silu_and_mul_ref
from localllm.kernels.rmsnorm_ref import rms_norm_ref


def gemv_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
             norm: tuple[torch.Tensor, float] | None = None, silu_mul: bool = False,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    if norm is not None:
        x = rms_norm_ref(x, norm[0], norm[1])
    if silu_mul:
        x = silu_and_mul_ref(x)
    y = F.linear(x, weight, bias)
    return y if residual is None else y + residual
