"""The flattened input of one forward pass, built from the scheduler's decision.

A step travels as a PackedStep: a fixed-size int64 header (the lengths) and one flat int32 payload (token ids,
positions, slot mapping, logits rows, query starts, context lengths, block tables, in-flight rows). The engine
core packs it; every tensor-parallel rank, the core's own included, turns the same two arrays into a StepBatch
with `unpack`, so the ranks run the same forward from the same numbers (and replay the same CUDA graph).

A step in which every sequence decodes and some verify drafts may be laid out uniformly (VerifyLayout): each
sequence gets exactly query_len rows, its real tokens first, then padding rows that store nothing (slot -1). Its
context length counts the padding too: the attention kernels place the last of a sequence's q_len query rows at its
context's last position (row j at context_len - q_len + j), so the real rows keep their true positions, and the
causal mask keeps them from the padding's keys, which lie after them. The step then has one shape per batch size,
which a CUDA graph replays (cuda_graphs.py), instead of hundreds of kernel launches from Python.

Each part of the payload starts on a 16-byte boundary. Triton compiles a kernel once per alignment of its pointer
arguments (16-byte aligned or not), so parts packed end to end gave the attention and KV-store kernels a new
alignment mix with every few step shapes, and each compiled anew while requests waited: on one H200 the
nano-vllm workload ran 2.7x slower on a fresh machine than on one whose Triton cache held those variants.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import accumulate

import numpy as np
import torch

from localllm.engine.request import Sequence
from localllm.engine.scheduler import ScheduledSeq
from localllm.layers.attention import AttentionMetadata

# header fields, in order
HEADER_FIELDS = ("command", "num_tokens", "num_seqs", "num_sampling", "table_width", "num_decodes",
                 "max_query_len", "max_context_len", "num_pending", "mirror_sampled", "uniform_query_len", "num_scored")
H = {name: i for i, name in enumerate(HEADER_FIELDS)}
HEADER_LEN = len(HEADER_FIELDS)
CMD_STEP, CMD_STOP = 1, 0


# int32 elements per 16 bytes: every part of the payload starts at a multiple of this
PART_ALIGN = 4


def _aligned(n: int) -> int:
    return -(-n // PART_ALIGN) * PART_ALIGN


def payload_parts(header) -> list[int]:
    """The lengths of the payload's parts, in order: ids, positions, slots (T each), logits rows (S), query
    starts (B + 1), context lengths (B), block tables (B x width), in-flight rows and their sources, scored rows."""
    t, b, s, width, pending, scored = (int(header[H[k]]) for k in ("num_tokens", "num_seqs", "num_sampling",
                                                                    "table_width", "num_pending", "num_scored"))
    return [t, t, t, s, b + 1, b, b * width, pending, pending, scored]


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
    uniform_query_len: int = 0       # laid out uniformly: every sequence has this many rows (0: it is not)
    scored_indices: torch.Tensor | None = None   # rows whose logits score the prompt token after them (ascending)


@dataclass(frozen=True)
class VerifyLayout:
    """Verifying steps of at most max_seqs sequences get query_len rows per sequence (1 + the most drafts)."""
    query_len: int
    max_seqs: int


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
    # rank 0's own: the sequences whose prompt tokens the scored rows score, in row order
    scored: list[ScoredRows] = field(default_factory=list)


@dataclass(frozen=True)
class ScoredRows:
    """A sequence's scored rows in a step: the next len(targets) scored rows score its prompt tokens `targets`
    (each the token after its row's)."""
    seq: Sequence
    targets: list[int]


@dataclass
class _RowUses:
    """What a step's rows are for beyond the forward: the LM head's rows and their sequences, the pooling slices,
    and the rows whose input is a token still in flight (with where in that step's tokens it is)."""
    logits_at: list[int] = field(default_factory=list)
    sampling_seqs: list[Sequence] = field(default_factory=list)
    num_drafts: list[int] = field(default_factory=list)
    pooling: list[PoolingSlice] = field(default_factory=list)
    pending_rows: list[int] = field(default_factory=list)
    pending_from: list[int] = field(default_factory=list)
    scored_at: list[int] = field(default_factory=list)
    scored: list[ScoredRows] = field(default_factory=list)

    def add(self, item: ScheduledSeq, t: int) -> None:
        """The sequence whose rows start at t: its logits rows (its last token's, and every draft's too), or the
        rows it pools."""
        n = item.num_new_tokens
        if item.samples:
            self.logits_at.extend(range(t + n - 1 - item.num_draft_tokens, t + n))
            self.sampling_seqs.append(item.seq)
            self.num_drafts.append(item.num_draft_tokens)
        elif item.seq.pools:
            self.pooling.append(PoolingSlice(item.seq, t, n, item.seq.num_computed_tokens, item.reaches_last_token))
        if item.seq.scores_prompt:
            self._score(item.seq, t, n)

    def _score(self, seq: Sequence, t: int, n: int) -> None:
        """The rows of positions [start, start + n) whose next token is a prompt token not scored yet."""
        start = seq.num_computed_tokens
        first, end = max(start, seq.scored_through), min(start + n, seq.num_prompt_tokens - 1)
        if first < end:
            self.scored_at.extend(range(t + first - start, t + end - start))
            self.scored.append(ScoredRows(seq, seq.token_ids[first + 1:end + 1]))
            seq.scored_through = end


class StepBatchBuilder:
    """Writes each step's index arrays into one reusable host buffer.

    On a GPU it is sent through pinned memory: a copy from ordinary (pageable) memory first waits for the GPU to
    go idle, which would stall the host behind the step in flight. torch's pinned-memory cache keeps each pinned
    block until its copy has run, so the next step can be built while this one's copy is still queued.
    """

    def __init__(self, block_size: int, device: torch.device, max_num_tokens: int, max_num_seqs: int,
                 max_blocks_per_seq: int, verify_layout: VerifyLayout | None = None):
        """verify_layout: lay verifying steps out uniformly (None: as chunks)."""
        self.block_size = block_size
        self.device = device
        self.verify_layout = verify_layout
        if verify_layout is not None:   # its padding rows, and the context they add
            max_num_tokens = max(max_num_tokens, verify_layout.max_seqs * verify_layout.query_len)
            max_blocks_per_seq += -(-(verify_layout.query_len - 1) // block_size)
        # logits rows are at most one per token (a sequence verifying drafts has one per token), and so are scored rows
        size = 5 * max_num_tokens + 2 * max_num_seqs + 1 + max_num_seqs * max_blocks_per_seq + 2 * max_num_seqs \
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

    def uniform_query_len(self, ordered: list[ScheduledSeq]) -> int:
        """Rows per sequence if the step is laid out uniformly, else 0: every sequence decodes (its last token, maybe
        drafts after it), some verify drafts, and no more run than the layout allows."""
        layout = self.verify_layout
        if layout is None or len(ordered) > layout.max_seqs or not any(s.num_draft_tokens for s in ordered):
            return 0
        decoding = all(s.samples and s.num_new_tokens == s.num_draft_tokens + 1 <= layout.query_len for s in ordered)
        return layout.query_len if decoding else 0

    def pack(self, scheduled: list[ScheduledSeq]) -> PackedStep:
        # decodes first: the attention layer batches all single-token queries in one call
        ordered = sorted(scheduled, key=lambda s: s.num_new_tokens != 1)
        uniform = self.uniform_query_len(ordered)
        rows = [uniform or s.num_new_tokens for s in ordered]
        # a padded sequence's context counts its padding rows, which come after its real ones (see the module doc)
        context_lens = [s.seq.num_computed_tokens + r for s, r in zip(ordered, rows)]
        query_start_loc = list(accumulate(rows, initial=0))
        t, b = query_start_loc[-1], len(ordered)
        width = max(-(-n // self.block_size) for n in context_lens)
        buf = self._payload.numpy()
        stride = _aligned(t)
        ids, positions, slots = (buf[i * stride:i * stride + t] for i in range(3))
        # the kernels never read past a sequence's context; a padded one's tail reads block 0, masked out
        tables = np.zeros((b, width), dtype=np.int32)
        uses = _RowUses()
        for i, item in enumerate(ordered):
            start = query_start_loc[i]
            self._write_rows(item, start, rows[i], ids, positions, slots, uses)
            tables[i, :len(item.seq.block_table)] = item.seq.block_table
            uses.add(item, start)
        header = self._header
        header.numpy()[:] = (CMD_STEP, t, b, len(uses.logits_at), width, rows.count(1), max(rows), max(context_lens),
                             len(uses.pending_rows), 0, uniform, len(uses.scored_at))
        offset = 3 * stride
        for part in (uses.logits_at, query_start_loc, context_lens, tables.reshape(-1), uses.pending_rows,
                     uses.pending_from, uses.scored_at):
            buf[offset:offset + len(part)] = part
            offset += _aligned(len(part))
        return PackedStep(header.clone(), self._payload[:offset], uses.sampling_seqs, uses.num_drafts, uses.pooling,
                          uses.scored)

    def _write_rows(self, item: ScheduledSeq, t: int, num_rows: int, ids: np.ndarray, positions: np.ndarray,
                    slots: np.ndarray, uses: _RowUses) -> None:
        """Rows t .. t + num_rows: the sequence's new tokens (drafts included), then any padding rows."""
        seq, n, bs = item.seq, item.num_new_tokens, self.block_size
        start, table = seq.num_computed_tokens, seq.block_table
        if n == 1:
            if start < len(seq.token_ids):
                ids[t] = seq.token_ids[start]
            else:   # its input is the token the step in flight samples
                ids[t] = 0
                uses.pending_rows.append(t)
                uses.pending_from.append(seq.pending_index)
            positions[t] = start
            slots[t] = table[start // bs] * bs + start % bs
        else:
            ids[t:t + n] = (seq.token_ids[start:start + n] + seq.draft_token_ids)[:n]
            pos = np.arange(start, start + n)
            positions[t:t + n] = pos
            slots[t:t + n] = np.asarray(table)[pos // bs] * bs + pos % bs
        # padding stores nothing and its outputs are never read: any token id, and a position the rotary tables hold
        ids[t + n:t + num_rows] = 0
        positions[t + n:t + num_rows] = start + n - 1
        slots[t + n:t + num_rows] = -1


def unpack(header: torch.Tensor, payload: torch.Tensor, device: torch.device,
           in_flight_tokens: torch.Tensor | None) -> StepBatch:
    """The StepBatch of a packed step whose payload is already on `device`. in_flight_tokens: the device tensor
    of tokens the step in flight samples, where the rows of sequences whose latest token is not read back yet
    take their input from."""
    b, width, n_pending = (int(header[H[k]]) for k in ("num_seqs", "table_width", "num_pending"))
    # the parts torch indexes with (ids, positions, logits rows, in-flight rows) in int64, by one conversion of the
    # whole payload; the GPU kernels take the others in int32 (the plain-torch path, int64 too)
    wide = payload.long()
    sizes = payload_parts(header)
    input_ids, positions, _, logits_at, _, _, _, rows, sources, scored_at = _parts(wide, sizes)
    _, _, slots, _, query_start, context_lens, tables, _, _, _ = _parts(payload if device.type == "cuda" else wide,
                                                                        sizes)
    if n_pending:
        input_ids[rows] = in_flight_tokens[sources]
    on_host = device.type != "cuda"
    meta = AttentionMetadata(
        slot_mapping=slots, block_tables=tables.view(b, width), context_lens=context_lens,
        query_start_loc=query_start, num_seqs=b, num_decodes=int(header[H["num_decodes"]]),
        max_query_len=int(header[H["max_query_len"]]), max_context_len=int(header[H["max_context_len"]]),
        query_start_loc_host=query_start.tolist() if on_host else [],
        context_lens_host=context_lens.tolist() if on_host else [])
    return StepBatch(input_ids, positions, meta, logits_at,
                     uniform_query_len=int(header[H["uniform_query_len"]]), scored_indices=scored_at)


def _parts(payload: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The payload's parts (views), of the lengths payload_parts gives."""
    return [part[:n] for part, n in zip(payload.split([_aligned(n) for n in sizes]), sizes)]


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device, without making the host wait for the GPU (see StepBatchBuilder)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
