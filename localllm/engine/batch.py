"""The flattened input of one forward pass, built from the scheduler's decision.

A step travels as a PackedStep: a fixed-size int64 header (the lengths) and one flat int32 payload (token ids,
positions, slot mapping, logits rows, query starts, context lengths, block tables, in-flight rows). The engine
core packs it; every tensor-parallel rank, the core's own included, turns the same two arrays into a StepBatch
with `unpack`, so the ranks run the same forward from the same numbers.

Each part of the payload starts on a 16-byte boundary. Triton compiles a kernel once per alignment of its pointer
arguments (16-byte aligned or not), so parts packed end to end gave the attention and KV-store kernels a new
alignment mix with every few step shapes, and each compiled anew while requests waited: on one H200 the
nano-vllm workload ran 2.7x slower on a fresh machine than on one whose Triton cache held those variants.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from localllm.engine.request import Sequence
from localllm.engine.scheduler import ScheduledSeq
from localllm.layers.attention import AttentionMetadata

# header fields, in order
HEADER_FIELDS = ("command", "num_tokens", "num_seqs", "num_sampling", "table_width", "num_decodes",
                 "max_query_len", "max_context_len", "num_pending", "mirror_sampled")
H = {name: i for i, name in enumerate(HEADER_FIELDS)}
HEADER_LEN = len(HEADER_FIELDS)
CMD_STEP, CMD_STOP = 1, 0


# int32 elements per 16 bytes: every part of the payload starts at a multiple of this
PART_ALIGN = 4


def _aligned(n: int) -> int:
    return -(-n // PART_ALIGN) * PART_ALIGN


def payload_parts(header) -> list[int]:
    """The lengths of the payload's parts, in order: ids, positions, slots (T each), logits rows (S), query
    starts (B + 1), context lengths (B), block tables (B x width), in-flight rows and their sources."""
    t, b, s, width, pending = (int(header[H[k]]) for k in
                               ("num_tokens", "num_seqs", "num_sampling", "table_width", "num_pending"))
    return [t, t, t, s, b + 1, b, b * width, pending, pending]


def payload_len(header) -> int:
    return sum(_aligned(n) for n in payload_parts(header))


@dataclass(frozen=True)
class StepBatch:
    input_ids: torch.Tensor          # [T] this step's tokens of every sequence, one after another
    positions: torch.Tensor          # [T]
    attention: AttentionMetadata
    logits_indices: torch.Tensor     # [S] the last token of each sequence that samples this step, and every token
    #                                  of a sequence verifying drafts
    sampling_seqs: list[Sequence] = field(default_factory=list)   # those S sequences (on rank 0), in order


@dataclass(frozen=True)
class PoolingSlice:
    """The rows of one pooling sequence in a step: rows [start, start + length) of the hidden states hold its
    tokens at positions [first_position, first_position + length)."""
    seq: Sequence
    start: int
    length: int
    first_position: int
    last_chunk: bool                 # the step computes its last prompt token: its vector is complete after it


@dataclass
class PackedStep:
    header: torch.Tensor             # [HEADER_LEN] int64, on the host
    payload: torch.Tensor            # [payload_len(header)] int32, on the host
    sampling_seqs: list[Sequence]
    # rank 0's own: how many drafts each sampling sequence verifies (its logits rows are that many plus one)
    num_drafts: list[int] = field(default_factory=list)
    # rank 0's own: no other rank pools, since every rank holds the same whole hidden states
    pooling: list[PoolingSlice] = field(default_factory=list)


class StepBatchBuilder:
    """Writes each step's index arrays into one reusable host buffer.

    On a GPU it is sent through pinned memory: a copy from ordinary (pageable) memory first waits for the GPU to
    go idle, which would stall the host behind the step in flight. torch's pinned-memory cache keeps each pinned
    block until its copy has run, so the next step can be built while this one's copy is still queued.
    """

    def __init__(self, block_size: int, device: torch.device, max_num_tokens: int, max_num_seqs: int,
                 max_blocks_per_seq: int):
        self.block_size = block_size
        self.device = device
        # logits rows are at most one per token (a sequence verifying drafts has one per token)
        size = 4 * max_num_tokens + 2 * max_num_seqs + 1 + max_num_seqs * max_blocks_per_seq + 2 * max_num_seqs \
            + len(HEADER_FIELDS) * PART_ALIGN   # room for each part's alignment padding
        self._payload = torch.empty(size, dtype=torch.int32)
        self._header = torch.zeros(HEADER_LEN, dtype=torch.int64)

    def build(self, scheduled: list[ScheduledSeq], in_flight_tokens: torch.Tensor | None = None) -> StepBatch:
        """The step as this process runs it (no other rank involved)."""
        packed = self.pack(scheduled)
        batch = unpack(packed.header, self.to_device(packed.payload), self.device, in_flight_tokens)
        return replace(batch, sampling_seqs=packed.sampling_seqs)

    def to_device(self, payload: torch.Tensor) -> torch.Tensor:
        return to_device(payload, self.device) if self.device.type == "cuda" else payload.clone()

    def pack(self, scheduled: list[ScheduledSeq]) -> PackedStep:
        # decodes first: the attention layer batches all single-token queries in one call
        ordered = sorted(scheduled, key=lambda s: s.num_new_tokens != 1)
        bs = self.block_size
        context_lens = [s.seq.num_computed_tokens + s.num_new_tokens for s in ordered]
        num_tokens = sum(s.num_new_tokens for s in ordered)
        b, width = len(ordered), max(-(-n // bs) for n in context_lens)
        buf = self._payload.numpy()
        stride = _aligned(num_tokens)
        ids, positions, slots = (buf[i * stride:i * stride + num_tokens] for i in range(3))
        tables = np.zeros((b, width), dtype=np.int32)   # the kernels never read past a sequence's blocks
        logits_at: list[int] = []
        sampling_seqs: list[Sequence] = []
        num_drafts: list[int] = []
        pooling: list[PoolingSlice] = []
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
                else:   # its input is the token the step in flight samples
                    ids[t] = 0
                    pending_rows.append(t)
                    pending_from.append(seq.pending_index)
                positions[t] = start
                slots[t] = table[start // bs] * bs + start % bs
            else:
                ids[t:t + n] = (seq.token_ids[start:] + seq.draft_token_ids)[:n]
                pos = np.arange(start, start + n)
                positions[t:t + n] = pos
                slots[t:t + n] = np.asarray(table)[pos // bs] * bs + pos % bs
            tables[i, :len(table)] = table
            t += n
            query_start_loc.append(t)
            if item.samples:
                logits_at.extend(range(t - 1 - item.num_draft_tokens, t))
                sampling_seqs.append(seq)
                num_drafts.append(item.num_draft_tokens)
            elif seq.pools:
                pooling.append(PoolingSlice(seq, t - n, n, start, item.reaches_last_token))
        header = self._header
        header.numpy()[:] = (CMD_STEP, t, b, len(logits_at), width,
                             sum(1 for s in ordered if s.num_new_tokens == 1),
                             max(s.num_new_tokens for s in ordered), max(context_lens), len(pending_rows), 0)
        offset = 3 * stride
        for part in (logits_at, query_start_loc, context_lens, tables.reshape(-1), pending_rows, pending_from):
            buf[offset:offset + len(part)] = part
            offset += _aligned(len(part))
        return PackedStep(header.clone(), self._payload[:offset], sampling_seqs, num_drafts, pooling)


def unpack(header: torch.Tensor, payload: torch.Tensor, device: torch.device,
           in_flight_tokens: torch.Tensor | None) -> StepBatch:
    """The StepBatch of a packed step whose payload is already on `device`. in_flight_tokens: the device tensor
    of tokens the step in flight samples, where the rows of sequences whose latest token is not read back yet
    take their input from."""
    b, width, n_pending = (int(header[H[k]]) for k in ("num_seqs", "table_width", "num_pending"))
    if device.type != "cuda":
        payload = payload.long()   # the plain-torch path indexes with int64; the GPU kernels take int32
    sizes = payload_parts(header)
    parts = payload.split([_aligned(n) for n in sizes])
    ids, positions, slots, logits_at, query_start, context_lens, tables, rows, sources = (
        part[:n] for part, n in zip(parts, sizes))
    input_ids = ids.long()
    if n_pending:
        input_ids[rows.long()] = in_flight_tokens[sources.long()]
    on_host = device.type != "cuda"
    meta = AttentionMetadata(
        slot_mapping=slots, block_tables=tables.view(b, width), context_lens=context_lens,
        query_start_loc=query_start, num_seqs=b, num_decodes=int(header[H["num_decodes"]]),
        max_query_len=int(header[H["max_query_len"]]), max_context_len=int(header[H["max_context_len"]]),
        query_start_loc_host=query_start.tolist() if on_host else [],
        context_lens_host=context_lens.tolist() if on_host else [])
    return StepBatch(input_ids, positions.long(), meta, logits_at.long())


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device, without making the host wait for the GPU (see StepBatchBuilder)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
