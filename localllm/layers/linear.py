"""Linear layers split for tensor parallelism (Megatron style); each loads only its own shard.

Column-parallel layers (QKV, gate/up) keep a slice of the output features and need no communication; a
row-parallel layer (o_proj, down_proj) keeps a slice of the input features, and its partial products are summed
over the ranks with one all-reduce. A column-parallel layer feeding a row-parallel one therefore costs one
all-reduce per pair.

A weight may be kept as quantized blocks (layers/quantized.py); each layer names the rows each of its checkpoint
tensors fills (shard_rows), which places the tensors and plans the block layout alike.

At one token a step on a GPU, a small dense projection runs as one GEMV kernel (kernels/gemv.py) that also does
the RMSNorm before it (column-parallel) or the SiLU-and-mul before it and the residual add after it (row-parallel):
a decoder layer then launches seven kernels instead of ten. `normed_projection` and `add_projection` are the two
halves of a pre-norm block written so that either path runs.
"""
from __future__ import annotations

import torch
from torch import nn

from localllm.layers.parallel import all_reduce, tp_rank, tp_size
from localllm.layers.peer_exchange import PendingSum
from localllm.layers.quantized import apply_weight, new_weight, store_rows
from localllm.layers.shards import columns, rows, whole

# Up to this size the fused GEMV beats cuBLAS plus the launches it saves; larger matrices stream faster through
# cuBLAS (one H200: scripts/gpu_gemv_check.py, docs/benchmarks.md).
FUSED_GEMV_MAX_BYTES = 48 << 20
# A down projection's GEMV also saves the SiLU-and-mul launch and, WIDE_ROWS rows or wider, shares that
# prologue over 8 rows a tile: one TP=2 rank's share of Llama-3.1-8B's down (59 MB) decoded 380 tok/s through it
# against 372.5 through cuBLAS; the whole 8B's (117 MB) 219 against 229.
DOWN_GEMV_MAX_BYTES = 64 << 20


def fuses_gemv(x: torch.Tensor, module: nn.Module, silu_mul: bool = False) -> bool:
    """Whether module's projection of x (of silu(gate) * up of x's halves with silu_mul) runs as the fused GEMV: one
    token, on a GPU, a dense weight of x's dtype up to its size limit, or of any size where the GEMV also does the
    all-reduce (a peer site)."""
    weight = module.weight
    if not (x.is_cuda and x.shape[0] == 1 and getattr(module, "layout", None) is None and weight.dtype == x.dtype):
        return False
    if getattr(module, "peer_site", None) is not None:
        return True
    from localllm.kernels.gemv import WIDE_ROWS   # (the kernels, and Triton, only where a GPU runs them)

    wide_down = silu_mul and weight.shape[0] >= WIDE_ROWS
    return weight.numel() * weight.element_size() <= (DOWN_GEMV_MAX_BYTES if wide_down else FUSED_GEMV_MAX_BYTES)


def normed_projection(proj: nn.Module, norm: nn.Module, hidden: torch.Tensor | None, residual: torch.Tensor | None,
                      act: nn.Module | None = None):
    """(act(proj(norm(hidden + residual))), hidden + residual): the input projection of a pre-norm block and the
    residual stream after it. hidden None: nothing to add (the previous block added its output in place); residual
    None: the first block, whose stream starts at hidden."""
    if residual is None:
        residual, hidden = hidden, None
    if hidden is None:
        return proj(residual, norm, act), residual
    normed, residual = norm(hidden, residual)
    return proj(normed, act=act), residual


def gated_mlp(gate_up: "MergedColumnParallelLinear", down: "RowParallelLinear", act: nn.Module, norm: nn.Module,
              hidden: torch.Tensor | None, residual: torch.Tensor | None):
    """(down(act(gate_up(norm(hidden + residual)))) as add_projection returns it, hidden + residual): a pre-norm
    SwiGLU MLP. The activation runs where it needs no launch of its own: in the prologue of down's fused GEMV
    where that runs, else with gate_up (inside the quantized GEMV's store where that runs)."""
    # the stream's rows decide it: hidden may be a PendingSum of the ranks' partial sums, residual is a tensor
    in_down = fuses_gemv(residual if residual is not None else hidden, down, silu_mul=True)
    activated, residual = normed_projection(gate_up, norm, hidden, residual, None if in_down else act)
    return add_projection(down, activated, residual, act if in_down else None), residual


def add_projection(proj: "RowParallelLinear", x: torch.Tensor, residual: torch.Tensor, act: nn.Module | None = None):
    """The output projection of a block, proj(act(x)): where the fused GEMV runs, added into residual in place (and
    None returned) or, split over GPUs, pushed to the ranks for the next norm to add (a PendingSum returned); else
    returned for the next block's norm to add."""
    if fuses_gemv(x, proj, silu_mul=act is not None):
        return proj.add_into(x, residual, silu_mul=act is not None)
    return proj(act(x) if act is not None else x)


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

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None, act: nn.Module | None = None) -> torch.Tensor:
        """act(x @ W^T (+ bias)); norm: an RMSNorm applied to x first; act: a merged gate/up's SiluAndMul
        (quantized.apply_weight)."""
        if fuses_gemv(x, self):
            from localllm.kernels.gemv import gemv

            y = gemv(x, self.weight, self.bias, norm=(norm.weight, norm.eps) if norm is not None else None)
            return act(y) if act is not None else y
        return apply_weight(norm(x) if norm is not None else x, self, self.bias, act)


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
    peer_site = None   # its place in the exchange buffer where one-token steps split the all-reduce (peer_exchange)

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

    def add_into(self, x: torch.Tensor, residual: torch.Tensor, silu_mul: bool = False) -> PendingSum | None:
        """residual += self(x) (x = silu(gate) * up of x's halves first) with the fused GEMV. Rank 0 adds the
        residual and the bias to its partial product, so the all-reduce of the partials is the new residual. With a
        peer site the partials are pushed to the ranks instead, and the sum is pending until a norm pulls it."""
        from localllm.kernels.gemv import gemv

        first = tp_rank() == 0
        pushed = gemv(x, self.weight, self.bias if first else None, silu_mul=silu_mul,
                      residual=residual if first else None, out=residual, push=self.peer_site)
        if self.peer_site is not None:   # given only to the projections of a group (rank_setup)
            return PendingSum(self.peer_site, pushed)
        reduced = all_reduce(residual)
        if reduced is not residual:   # a reducer that does not work in place
            residual.copy_(reduced)
        return None
