"""The flattened input of one forward pass, built from the scheduler's decision."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from localllm.engine.request import Sequence
from localllm.engine.scheduler import ScheduledSeq
from localllm.layers.attention import AttentionMetadata


@dataclass(frozen=True)
class StepBatch:
    input_ids: torch.Tensor          # [T] this step's tokens of every sequence, one after another
    positions: torch.Tensor          # [T]
    attention: AttentionMetadata
    logits_indices: torch.Tensor     # [S] the last token of each sequence that samples this step
    sampling_seqs: list[Sequence]    # those S sequences, in the same order


class StepBatchBuilder:
    """Writes each step's index arrays into reusable host buffers and sends them to the device.

    On a GPU they go through pinned memory: a copy from ordinary (pageable) memory first waits for the GPU to go
    idle, which would stall the host behind the step in flight. torch's pinned-memory cache keeps each pinned
    block until its copy has run, so the next step can be built while this one's copies are still queued.
    """

    def __init__(self, block_size: int, device: torch.device, max_num_tokens: int, max_num_seqs: int,
                 max_blocks_per_seq: int):
        self.block_size = block_size
        self.device = device
        # the GPU kernels take int32 metadata; the CPU path indexes with int64
        meta_dtype = torch.int32 if device.type == "cuda" else torch.int64
        self._tokens = torch.empty((3, max_num_tokens), dtype=torch.int64)
        self._meta_tokens = torch.empty(max_num_tokens, dtype=meta_dtype)
        self._meta_seqs = torch.empty((2, max_num_seqs + 1), dtype=meta_dtype)
        self._tables = torch.empty(max_num_seqs * max_blocks_per_seq, dtype=meta_dtype)

    def _send(self, host: torch.Tensor) -> torch.Tensor:
        return to_device(host, self.device) if self.device.type == "cuda" else host.clone()

    def build(self, scheduled: list[ScheduledSeq], in_flight_tokens: torch.Tensor | None = None) -> StepBatch:
        """in_flight_tokens: the device tensor of tokens the step in flight samples, where sequences whose
        latest token is not read back yet (Sequence.pending_index) take their input from."""
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
        pending_rows: list[int] = []
        pending_from: list[int] = []
        t = 0
        for i, item in enumerate(ordered):
            seq, n = item.seq, item.num_new_tokens
            start, table = seq.num_computed_tokens, seq.block_table
            if n == 1:
                if start < len(seq.token_ids):
                    ids[t] = seq.token_ids[start]
                else:
                    pending_rows.append(t)
                    pending_from.append(seq.pending_index)
                positions[t] = start
                slots[t] = table[start // bs] * bs + start % bs
            else:
                ids[t:t + n] = seq.token_ids[start:start + n]
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
        input_ids = self._send(self._tokens[0, :t])
        if pending_rows:
            rows, sources = to_device(torch.tensor([pending_rows, pending_from]), self.device)
            input_ids[rows] = in_flight_tokens[sources]
        return StepBatch(input_ids, self._send(self._tokens[1, :t]), meta,
                         self._send(self._tokens[2, :len(sampling_seqs)]), sampling_seqs)


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device, without making the host wait for the GPU (see StepBatchBuilder)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
