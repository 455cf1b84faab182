"""Linear layers split for tensor parallelism (Megatron style); each loads only its own shard.

Column-parallel layers (QKV, gate/up) keep a slice of the output features and need no communication; a
row-parallel layer (o_proj, down_proj) keeps a slice of the input features, and its partial products are summed
over the ranks with one all-reduce. A column-parallel layer feeding a row-parallel one therefore costs one
all-reduce per pair.

A weight may be kept as quantized blocks (layers/quantized.py); each layer names the rows each of its checkpoint
tensors fills (shard_rows), which places the tensors and plans the block layout alike.
"""
from __future__ import annotations

import torch
from torch import nn

from localllm.layers.parallel import all_reduce, tp_rank, tp_size
from localllm.layers.quantized import apply_weight, new_weight, store_rows
from localllm.layers.shards import columns, rows, whole


def _divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"tensor_parallel_size {d} does not divide the model's {n} {what}")
    return n // d


class ColumnParallelLinear(nn.Module):
    """Output features split over ranks; no communication in forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.out_per_rank = _divide(out_features, tp_size(), "output features")
        self.weight = new_weight(self.out_per_rank, in_features)
        self.bias = nn.Parameter(torch.empty(self.out_per_rank), requires_grad=False) if bias else None

    def shard_rows(self, shard_id=None) -> tuple[int, int, int]:
        """(first row in this rank's weight, row count, first row in the checkpoint tensor) of a shard."""
        return 0, self.out_per_rank, tp_rank() * self.out_per_rank

    def load_weight(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        offset, size, start = self.shard_rows(shard_id)
        part = rows(loaded, start, size)
        if param is self.weight:
            store_rows(self, offset, part)
        else:
            param.data.narrow(0, offset, size).copy_(part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_weight(x, self, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input stored as one matrix (e.g. gate and up)."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False):
        self.out_sizes = out_sizes
        super().__init__(in_features, sum(out_sizes), bias)

    def shard_rows(self, shard_id=None) -> tuple[int, int, int]:
        tp = tp_size()
        size = _divide(self.out_sizes[shard_id], tp, "intermediate features")
        return sum(self.out_sizes[:shard_id]) // tp, size, tp_rank() * size


class QKVParallelLinear(ColumnParallelLinear):
    """Q, K and V projections in one matrix; each rank holds its own heads of each. With fewer KV heads than
    ranks, each KV head is replicated on the tp / num_kv_heads neighbouring ranks whose query heads use it."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        tp = tp_size()
        self.head_dim = head_dim
        self.num_heads = _divide(num_heads, tp, "attention heads")
        self.total_kv_heads = num_kv_heads
        if num_kv_heads >= tp:
            self.num_kv_heads = _divide(num_kv_heads, tp, "key/value heads")
        else:
            if tp % num_kv_heads:
                raise ValueError(f"tensor_parallel_size {tp} is not a multiple of the model's {num_kv_heads} "
                                 "key/value heads")
            self.num_kv_heads = 1
        super().__init__(hidden_size, (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp, bias)

    def kv_head_index(self) -> int:
        """Which of the checkpoint's KV-head groups of size num_kv_heads this rank holds."""
        if self.total_kv_heads >= tp_size():
            return tp_rank()
        return tp_rank() * self.total_kv_heads // tp_size()

    def shard_rows(self, shard_id=None) -> tuple[int, int, int]:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            return 0, q_size, tp_rank() * q_size
        offset = q_size if shard_id == "k" else q_size + kv_size
        return offset, kv_size, self.kv_head_index() * kv_size


class RowParallelLinear(nn.Module):
    """Input features split over ranks; partial results summed across ranks."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_per_rank = _divide(in_features, tp_size(), "input features")
        self.out_features = out_features
        self.weight = new_weight(out_features, self.in_per_rank)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def shard_rows(self, shard_id=None) -> tuple[int, int, int]:
        return 0, self.out_features, 0

    def load_weight(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        if param is not self.weight:  # the bias is added once, after the reduction
            param.data.copy_(whole(loaded))
            return
        store_rows(self, 0, columns(loaded, tp_rank() * self.in_per_rank, self.in_per_rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = all_reduce(apply_weight(x, self))
        return y if self.bias is None else y + self.bias
