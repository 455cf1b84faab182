"""Turns a step's hidden states into the vectors of the pooling sequences it completes: the last token's state,
the mean over the prompt, or the first token's state, then Matryoshka truncation and L2 normalization.

A long prompt is prefilled in chunks over several steps, so each chunk adds to the sequence's partial result
(seq.pooled: a float32 running sum for mean, the first token's state for cls; last-token pooling needs only the
final chunk), and the vector is made when the last chunk is computed. A chunk that starts at position 0 starts
afresh: a preempted sequence is recomputed from its first token."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from localllm.engine.batch import PoolingSlice
from localllm.engine.request import Sequence
from localllm.loader.pooling_config import PoolingConfig


class Pooler:
    def __init__(self, config: PoolingConfig):
        self.config = config

    @property
    def shares_cached_prefix(self) -> bool:
        """Whether a pooling sequence may skip a cached prefix: only the last token's state counts."""
        return self.config.mode == "last"

    @torch.inference_mode()
    def __call__(self, hidden: torch.Tensor, slices: list[PoolingSlice]) -> list[tuple[Sequence, torch.Tensor]]:
        """(sequence, float32 vector on the host) for each sequence whose last prompt token this step computed."""
        done = []
        for piece in slices:
            rows = hidden[piece.start:piece.start + piece.length].float()
            seq = piece.seq
            if piece.first_position == 0:
                seq.pooled = None
            if self.config.mode == "mean":
                total = rows.sum(dim=0)
                seq.pooled = total if seq.pooled is None else seq.pooled + total
            elif self.config.mode == "cls" and piece.first_position == 0:
                seq.pooled = rows[0].clone()
            if piece.last_chunk:
                done.append((seq, self._vector(seq, rows)))
                seq.pooled = None
        return done

    def _vector(self, seq: Sequence, last_rows: torch.Tensor) -> torch.Tensor:
        mode = self.config.mode
        if mode == "last":
            vector = last_rows[-1]
        elif mode == "mean":
            vector = seq.pooled / seq.num_prompt_tokens
        else:
            vector = seq.pooled
        if seq.params.dimensions is not None:
            vector = vector[:seq.params.dimensions]
        if self.config.normalize:
            vector = F.normalize(vector, dim=0)
        return vector.cpu()
