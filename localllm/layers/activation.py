import torch
from torch import nn

from localllm.kernels.activation_ref import silu_and_mul_ref


class SiluAndMul(nn.Module):
    """SwiGLU: the first half of the last dimension gates the second."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from localllm.kernels.activation import silu_and_mul

            return silu_and_mul(x)
        return silu_and_mul_ref(x)
