"""Plain-torch SiLU-and-mul (SwiGLU), the reference of activation.silu_and_mul and the CPU path of the model's
activation layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """[..., 2I] -> [..., I]: silu(first half) * second half."""
    gate, up = x.chunk(2, -1)
    return F.silu(gate) * up
