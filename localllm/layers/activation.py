import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """SwiGLU: the first half of the last dimension gates the second."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from localllm.kernels.activation import silu_and_mul

            return silu_and_mul(x)
        gate, up = x.chunk(2, -1)
        return F.silu(gate) * up
