"""CUDA graphs of the steps whose shape repeats: decode steps (every sequence one query row) and, with speculative
decoding, verifying steps laid out uniformly (every sequence query_len rows, see batch.VerifyLayout). One graph per
batch size, captured once, replayed with the step's inputs copied into static buffers. A small model's step is
hundreds of kernel launches; replaying them as one graph removes the CPU launch cost that would otherwise bound its
speed (SmolLM2-135M on an H200: ~1 ms per replayed decode step, ~11.7 ms per eager verifying step)."""
from __future__ import annotations

import torch

from localllm.engine.batch import StepBatch
from localllm.layers.attention import AttentionMetadata


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
            meta, r = self._metadata(size), size * query_len
            self.hidden[:r] = model(self.input_ids[:r], self.positions[:r], meta)  # warm-up, compiles
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self.hidden[:r] = model(self.input_ids[:r], self.positions[:r], meta)
            pool = graph.pool()
            self.graphs[size] = graph
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
