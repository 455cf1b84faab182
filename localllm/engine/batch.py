"""The flattened input of one forward pass, built from the scheduler's decision."""
from __future__ import annotations

from dataclasses import dataclass

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


def build_step_batch(scheduled: list[ScheduledSeq], block_size: int, device: torch.device) -> StepBatch:
    # decodes first: the attention layer batches all single-token queries in one call
    ordered = sorted(scheduled, key=lambda s: s.num_new_tokens != 1)
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_start_loc = [0]
    context_lens: list[int] = []
    logits_indices: list[int] = []
    sampling_seqs: list[Sequence] = []
    for item in ordered:
        seq, start = item.seq, item.seq.num_computed_tokens
        end = start + item.num_new_tokens
        input_ids += seq.token_ids[start:end]
        positions += range(start, end)
        table = seq.block_table
        slots += [table[p // block_size] * block_size + p % block_size for p in range(start, end)]
        query_start_loc.append(query_start_loc[-1] + item.num_new_tokens)
        context_lens.append(end)
        if item.samples:
            logits_indices.append(query_start_loc[-1] - 1)
            sampling_seqs.append(seq)
    width = max(-(-n // block_size) for n in context_lens)
    tables = [s.seq.block_table[:width] + [0] * (width - min(width, len(s.seq.block_table))) for s in ordered]

    # the GPU kernels take int32 metadata; the CPU path indexes with int64
    index_dtype = torch.int32 if device.type == "cuda" else torch.int64

    def tensor(values, dtype=index_dtype):
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    meta = AttentionMetadata(
        slot_mapping=tensor(slots),
        block_tables=tensor(tables),
        context_lens=tensor(context_lens),
        query_start_loc=tensor(query_start_loc),
        num_decodes=sum(1 for s in ordered if s.num_new_tokens == 1),
        max_query_len=max(s.num_new_tokens for s in ordered),
        max_context_len=max(context_lens),
        query_start_loc_host=query_start_loc,
        context_lens_host=context_lens,
    )
    return StepBatch(tensor(input_ids, torch.int64), tensor(positions, torch.int64), meta,
                     tensor(logits_indices, torch.int64), sampling_seqs)
