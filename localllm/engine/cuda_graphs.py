"""CUDA graphs of engine steps. Decode steps (every sequence one query row) and, with speculative decoding,
verifying steps laid out uniformly (every sequence query_len rows, see batch.VerifyLayout): one graph per batch
size (StepGraphs). Every other step (prompts, chunks of them, decodes beside them): one graph per bucket of token
counts, of up to a fixed number of sequences (MixedGraphs). Captured once, replayed with the step's inputs copied
into static buffers. A small model's step is hundreds of kernel launches; replaying them as one graph removes the
CPU launch cost that would otherwise bound its speed (SmolLM2-135M on an H200: ~1 ms per replayed decode step,
~11.7 ms per eager verifying step; Qwen3-0.6B's 1,024-token prompt took 13 ms eager for ~2 ms of GPU work)."""
from __future__ import annotations

import torch

from localllm.engine.batch import StepBatch
from localllm.layers.attention import AttentionMetadata


def _capture(model, buffers, rows: int, meta: AttentionMetadata, pool) -> torch.cuda.CUDAGraph:
    """A graph of the model's forward over the first `rows` rows of the buffers' static input_ids, positions and
    hidden (the forward runs once first: that compiles its kernels outside the capture)."""
    buffers.hidden[:rows] = model(buffers.input_ids[:rows], buffers.positions[:rows], meta)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool):
        buffers.hidden[:rows] = model(buffers.input_ids[:rows], buffers.positions[:rows], meta)
    return graph


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_num_seqs + 1, 16))
    return sorted({s for s in sizes if s <= max_num_seqs} | {max_num_seqs})


class StepGraphs:
    def __init__(self, model, hidden_size: int, dtype: torch.dtype, device: torch.device, max_num_seqs: int,
                 max_context_len: int, block_size: int, query_len: int = 1, pool=None):
        """query_len: rows per sequence (1: decode steps). max_context_len: the longest context a step gives a
        sequence (a padded verifying sequence's counts its padding). pool: a memory pool of graphs captured before,
        to share (they never run at the same time, and keep no tensor of it alive between replays)."""
        self.sizes = graph_batch_sizes(max_num_seqs)
        self.query_len = query_len
        self.max_context_len = max_context_len
        n, width = self.sizes[-1], -(-max_context_len // block_size)
        rows = n * query_len
        i32 = dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((rows,), -1, **i32)
        self.context_lens = torch.zeros(n, **i32)
        self.block_tables = torch.zeros(n, width, **i32)
        # every sequence has query_len rows, so the query starts never change
        self.query_start_loc = torch.arange(0, rows + 1, query_len, **i32)
        self.hidden = torch.zeros(rows, hidden_size, dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        for size in reversed(self.sizes):   # largest first, so the smaller ones fit in its memory pool
            self.graphs[size] = _capture(model, self, size * query_len, self._metadata(size), pool)
            pool = self.graphs[size].pool()
        self.pool = pool
        torch.cuda.synchronize(device)

    def _metadata(self, size: int) -> AttentionMetadata:
        decode = self.query_len == 1
        return AttentionMetadata(self.slot_mapping[:size * self.query_len], self.block_tables[:size],
                                 self.context_lens[:size], self.query_start_loc[:size + 1], num_seqs=size,
                                 num_decodes=size if decode else 0, max_query_len=self.query_len,
                                 max_context_len=self.max_context_len, query_start_loc_host=[], context_lens_host=[])

    def can_run(self, batch: StepBatch) -> bool:
        meta = batch.attention
        if meta.num_seqs > self.sizes[-1] or meta.block_tables.shape[1] > self.block_tables.shape[1]:
            return False
        if self.query_len == 1:
            return meta.max_query_len == 1
        return batch.uniform_query_len == self.query_len

    def run(self, batch: StepBatch) -> torch.Tensor:
        """Hidden states [rows, hidden] of the batch's rows (padding rows of a uniform step included)."""
        meta = batch.attention
        n = meta.num_seqs
        size = next(s for s in self.sizes if s >= n)
        rows, padded_rows = n * self.query_len, size * self.query_len
        self.input_ids[:rows] = batch.input_ids
        self.positions[:rows] = batch.positions
        self.slot_mapping[:rows] = meta.slot_mapping
        # the graph's extra sequences write nowhere and attend to nothing (their rows' ids and positions are stale
        # but valid)
        self.slot_mapping[rows:padded_rows] = -1
        self.context_lens[:n] = meta.context_lens
        self.context_lens[n:size] = 0
        self.block_tables[:n, :meta.block_tables.shape[1]] = meta.block_tables
        self.graphs[size].replay()
        return self.hidden[:rows]


def token_buckets(max_tokens: int) -> list[int]:
    """Token counts of the mixed-step graphs: powers of two from 16, with the midpoints from 256 on (a step is
    padded to the next bucket: at most half again its size), up to max_tokens."""
    sizes, size = [], 16
    while size < max_tokens:
        sizes += [size, size * 3 // 2] if size >= 256 else [size]
        size *= 2
    return sorted({s for s in sizes if s < max_tokens} | {max_tokens})


class MixedGraphs:
    def __init__(self, model, hidden_size: int, dtype: torch.dtype, device: torch.device, max_tokens: int,
                 max_seqs: int, max_blocks: int, max_context_len: int, pool=None):
        """Graphs of steps of up to max_tokens tokens over up to max_seqs sequences of up to max_blocks blocks.
        The attention kernel finds each row's sequence from the query starts on the device and skips empty
        sequences, so one graph serves any split of its tokens: the graph's extra sequences get no rows and no
        context, its extra rows no sequence and no cache slot."""
        self.buckets = token_buckets(max_tokens)
        self.max_seqs = max_seqs
        rows = self.buckets[-1]
        i32 = dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((rows,), -1, **i32)
        self.query_start_loc = torch.zeros(max_seqs + 1, **i32)
        self.context_lens = torch.zeros(max_seqs, **i32)
        self.block_tables = torch.zeros(max_seqs, max_blocks, **i32)
        self.hidden = torch.zeros(rows, hidden_size, dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        for size in reversed(self.buckets):   # largest first, so the smaller ones fit in its memory pool
            meta = AttentionMetadata(self.slot_mapping[:size], self.block_tables, self.context_lens,
                                     self.query_start_loc, num_seqs=max_seqs, num_decodes=0, max_query_len=size,
                                     max_context_len=max_context_len, query_start_loc_host=[], context_lens_host=[])
            self.graphs[size] = _capture(model, self, size, meta, pool)
            pool = self.graphs[size].pool()
        self.pool = pool
        torch.cuda.synchronize(device)

    def can_run(self, batch: StepBatch) -> bool:
        meta = batch.attention
        return (meta.num_seqs <= self.max_seqs and batch.input_ids.shape[0] <= self.buckets[-1]
                and meta.block_tables.shape[1] <= self.block_tables.shape[1])

    def run(self, batch: StepBatch) -> torch.Tensor:
        """Hidden states [T, hidden] of the batch's T rows."""
        meta = batch.attention
        n, rows = meta.num_seqs, batch.input_ids.shape[0]
        size = next(b for b in self.buckets if b >= rows)
        self.input_ids[:rows] = batch.input_ids
        self.positions[:rows] = batch.positions
        self.slot_mapping[:rows] = meta.slot_mapping
        self.slot_mapping[rows:size] = -1
        self.query_start_loc[:n + 1] = meta.query_start_loc
        self.query_start_loc[n + 1:] = rows
        self.context_lens[:n] = meta.context_lens
        self.context_lens[n:] = 0
        self.block_tables[:n, :meta.block_tables.shape[1]] = meta.block_tables
        self.graphs[size].replay()
        return self.hidden[:rows]
