import torch
from torch import nn

from localllm.cpu_kernels import ops
from localllm.kernels.activation_ref import silu_and_mul_ref


class SiluAndMul(nn.Module):
    """SwiGLU: the first half of the last dimension gates the second."""
    cpu_ops = None   # the compiled CPU kernels, given by layers.cpu_quant.attach_cpu_kernels on the fast path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from localllm.kernels.activation import silu_and_mul

            return silu_and_mul(x)
        if self.cpu_ops is not None and x.dtype == torch.float32 and x.is_contiguous():
            return ops.silu_mul(self.cpu_ops, x)
        return silu_and_mul_ref(x)
