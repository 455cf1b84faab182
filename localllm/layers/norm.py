import torch
from torch import nn

from localllm.cpu_kernels import ops
from localllm.kernels.rmsnorm_ref import rms_norm_ref
from localllm.layers.peer_exchange import PendingSum


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 like the reference; optionally adds the residual first (pre-norm blocks)."""
    cpu_ops = None   # the compiled CPU kernels, given by layers.cpu_quant.attach_cpu_kernels on the fast path

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: torch.Tensor | PendingSum, residual: torch.Tensor | None = None):
        if isinstance(x, PendingSum):   # the ranks' partial sums of the residual stream, added here
            from localllm.kernels.rmsnorm import pulled_rms_norm

            return pulled_rms_norm(x.site, x.programs, self.weight, self.eps, residual)
        if x.is_cuda:  # one fused Triton kernel instead of ~8 launches
            from localllm.kernels.rmsnorm import rms_norm

            return rms_norm(x, self.weight, self.eps, residual)
        if self.cpu_ops is not None and x.dtype == torch.float32 and x.is_contiguous():
            return ops.rms_norm(self.cpu_ops, x, self.weight, self.eps,
                                None if residual is None else residual.contiguous())
        return rms_norm_ref(x, self.weight, self.eps, residual)
