"""Linear layers split for tensor parallelism (Megatron style); each knows how to load its shard."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from localllm.layers.parallel import all_reduce, tp_rank, tp_size


def _divide(n: int, d: int) -> int:
    if n % d:
        raise ValueError(f"{n} is not divisible by the tensor-parallel size {d}")
    return n // d


class ColumnParallelLinear(nn.Module):
    """Output features split over ranks; no communication in forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.out_per_rank = _divide(out_features, tp_size())
        self.weight = nn.Parameter(torch.empty(self.out_per_rank, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(self.out_per_rank), requires_grad=False) if bias else None

    def load_weight(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        size = param.shape[0]
        param.data.copy_(loaded.narrow(0, tp_rank() * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input stored as one matrix (e.g. gate and up)."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False):
        self.out_sizes = out_sizes
        super().__init__(in_features, sum(out_sizes), bias)

    def load_weight(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        tp = tp_size()
        offset = sum(self.out_sizes[:shard_id]) // tp
        size = self.out_sizes[shard_id] // tp
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, tp_rank() * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    """Q, K and V projections in one matrix; each rank holds its own heads of each."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        tp = tp_size()
        self.head_dim = head_dim
        self.num_heads = _divide(num_heads, tp)
        self.total_kv_heads = num_kv_heads
        # with more ranks than KV heads, neighbouring ranks each keep a copy of one KV head
        self.num_kv_heads = _divide(num_kv_heads, tp) if num_kv_heads >= tp else 1
        super().__init__(hidden_size, (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp, bias)

    def load_weight(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, size, index = 0, q_size, tp_rank()
        else:
            offset = q_size if shard_id == "k" else q_size + kv_size
            size = kv_size
            index = tp_rank() if self.total_kv_heads >= tp_size() else tp_rank() * self.total_kv_heads // tp_size()
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, index * size, size))


class RowParallelLinear(nn.Module):
    """Input features split over ranks; partial results summed across ranks."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_per_rank = _divide(in_features, tp_size())
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_rank), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def load_weight(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is added once, after the reduction
            param.data.copy_(loaded)
            return
        size = param.shape[1]
        param.data.copy_(loaded.narrow(1, tp_rank() * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        all_reduce(y)
        return y if self.bias is None else y + self.bias
