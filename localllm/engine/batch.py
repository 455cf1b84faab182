"""The flattened input of one forward pass, built from the scheduler's decision."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from localllm.engine.request import Sequence
from localllm.engine.scheduler import ScheduledSeq
from localllm.layers.attention import AttentionMetadata


@dataclass
class StepBatch:
    input_ids: torch.Tensor          # [T] this step's tokens of every sequence, one after another
    positions: torch.Tensor          # [T]
    attention: AttentionMetadata
    logits_indices: torch.Tensor     # [S] the last token of each sequence that samples this step
    sampling_seqs: list[Sequence]    # those S sequences, in the same order


class StepBatchBuilder:
    """Writes each step's index arrays into reusable host buffers and sends them to the device.

    On a GPU the buffers are pinned: a copy from ordinary (pageable) memory waits for the GPU to go idle first,
    which would stall the host behind the previous step. Reusing them is safe because every step ends with the
    host reading its sampled tokens, after which the GPU has consumed the copies.
    """

    def __init__(self, block_size: int, device: torch.device, max_num_tokens: int, max_num_seqs: int,
                 max_blocks_per_seq: int):
        self.block_size = block_size
        self.device = device
        pin = device.type == "cuda"
        # the GPU kernels take int32 metadata; the CPU path indexes with int64
        meta_dtype = torch.int32 if pin else torch.int64
        self._tokens = torch.empty((3, max_num_tokens), dtype=torch.int64, pin_memory=pin)
        self._meta_tokens = torch.empty(max_num_tokens, dtype=meta_dtype, pin_memory=pin)
        self._meta_seqs = torch.empty((2, max_num_seqs + 1), dtype=meta_dtype, pin_memory=pin)
        self._tables = torch.empty(max_num_seqs * max_blocks_per_seq, dtype=meta_dtype, pin_memory=pin)

    def _send(self, host: torch.Tensor) -> torch.Tensor:
        return host.to(self.device, non_blocking=True) if self.device.type == "cuda" else host.clone()

    def build(self, scheduled: list[ScheduledSeq]) -> StepBatch:
        # decodes first: the attention layer batches all single-token queries in one call
        ordered = sorted(scheduled, key=lambda s: s.num_new_tokens != 1)
        bs = self.block_size
        ids, positions, logits_at = self._tokens.numpy()
        slots = self._meta_tokens.numpy()
        query_start, context = self._meta_seqs.numpy()
        context_lens = [s.seq.num_computed_tokens + s.num_new_tokens for s in ordered]
        width = max(-(-n // bs) for n in context_lens)
        tables = self._tables.numpy()[:len(ordered) * width].reshape(len(ordered), width)
        sampling_seqs: list[Sequence] = []
        query_start_loc = [0]
        t = 0
        for i, item in enumerate(ordered):
            seq, n = item.seq, item.num_new_tokens
            start, table = seq.num_computed_tokens, seq.block_table
            ids[t:t + n] = seq.token_ids[start:start + n]
            if n == 1:
                positions[t] = start
                slots[t] = table[start // bs] * bs + start % bs
            else:
                pos = np.arange(start, start + n)
                positions[t:t + n] = pos
                slots[t:t + n] = np.asarray(table)[pos // bs] * bs + pos % bs
            tables[i, :len(table)] = table
            tables[i, len(table):] = 0   # the kernels never read past a sequence's blocks; the CPU gather does
            t += n
            query_start_loc.append(t)
            if item.samples:
                logits_at[len(sampling_seqs)] = t - 1
                sampling_seqs.append(seq)
        num_seqs = len(ordered)
        query_start[:num_seqs + 1] = query_start_loc
        context[:num_seqs] = context_lens
        meta = AttentionMetadata(
            slot_mapping=self._send(self._meta_tokens[:t]),
            block_tables=self._send(self._tables[:num_seqs * width].view(num_seqs, width)),
            context_lens=self._send(self._meta_seqs[1, :num_seqs]),
            query_start_loc=self._send(self._meta_seqs[0, :num_seqs + 1]),
            num_decodes=sum(1 for s in ordered if s.num_new_tokens == 1),
            max_query_len=max(s.num_new_tokens for s in ordered),
            max_context_len=max(context_lens),
            query_start_loc_host=query_start_loc,
            context_lens_host=context_lens,
        )
        return StepBatch(self._send(self._tokens[0, :t]), self._send(self._tokens[1, :t]), meta,
                         self._send(self._tokens[2, :len(sampling_seqs)]), sampling_seqs)
