"""Token embedding and LM head split over the vocabulary for tensor parallelism: each rank keeps
ceil(vocab / tp) rows (the last rank's tail is zero padding, which dequantizes to zeros when the weight is kept as
quantized blocks: layers/quantized.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from localllm.layers.parallel import all_reduce, gather_to_first, tp_rank, tp_size
from localllm.layers.quantized import apply_weight, new_weight, store_rows
from localllm.layers.shards import rows, shape_of


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.per_rank = -(-vocab_size // tp_size())
        self.start = tp_rank() * self.per_rank
        self.weight = new_weight(self.per_rank, hidden_size)
        self.dtype = torch.get_default_dtype()   # of the rows looked up, whatever the weight's storage

    def shard_rows(self, shard_id=None) -> tuple[int, int, int]:
        return 0, self.per_rank, self.start

    def load_weight(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        size = max(0, min(self.per_rank, shape_of(loaded)[0] - self.start))
        param.data.zero_()
        if size:
            store_rows(self, 0, rows(loaded, self.start, size))

    def _lookup(self, token_ids: torch.Tensor) -> torch.Tensor:
        layout = getattr(self, "layout", None)
        if layout is None:
            return F.embedding(token_ids, self.weight)
        return layout.rows_of(self.weight, token_ids, self.dtype)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if tp_size() == 1:
            return self._lookup(token_ids)
        # each rank looks up the ids in its slice and contributes zeros for the others; the sum has every row
        local = token_ids - self.start
        mine = (local >= 0) & (local < self.per_rank)
        y = self._lookup(local.clamp(0, self.per_rank - 1)) * mine.unsqueeze(-1)
        return all_reduce(y)


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states to logits; each rank computes its slice of the vocabulary, and only rank 0 (which
    samples) receives the whole rows. The caller passes only the rows that sample."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = gather_to_first(apply_weight(hidden, self))
        return None if logits is None else logits[..., : self.vocab_size]
