"""CUDA graphs of the decode step: one graph per batch size, captured once, replayed with the step's inputs
copied into static buffers. A small model's decode step is hundreds of kernel launches; replaying them as
one graph removes the CPU launch cost that would otherwise bound batch-1 speed."""
from __future__ import annotations

import torch

from localllm.engine.batch import StepBatch
from localllm.layers.attention import AttentionMetadata


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_num_seqs + 1, 16))
    return sorted({s for s in sizes if s <= max_num_seqs} | {max_num_seqs})


class DecodeGraphs:
    def __init__(self, model, hidden_size: int, dtype: torch.dtype, device: torch.device, max_num_seqs: int,
                 max_model_len: int, block_size: int):
        self.sizes = graph_batch_sizes(max_num_seqs)
        self.max_model_len = max_model_len
        n, width = self.sizes[-1], -(-max_model_len // block_size)
        i32 = dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, **i32)
        self.context_lens = torch.zeros(n, **i32)
        self.block_tables = torch.zeros(n, width, **i32)
        self.query_start_loc = torch.arange(n + 1, **i32)
        self.hidden = torch.zeros(n, hidden_size, dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        pool = None
        for size in reversed(self.sizes):   # largest first, so the smaller ones fit in its memory pool
            meta = self._metadata(size)
            self.hidden[:size] = model(self.input_ids[:size], self.positions[:size], meta)  # warm-up, compiles
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self.hidden[:size] = model(self.input_ids[:size], self.positions[:size], meta)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(device)

    def _metadata(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:size], self.block_tables[:size], self.context_lens[:size],
                                 self.query_start_loc[:size + 1], num_seqs=size, num_decodes=size, max_query_len=1,
                                 max_context_len=self.max_model_len, query_start_loc_host=[], context_lens_host=[])

    def can_run(self, batch: StepBatch) -> bool:
        meta = batch.attention
        return meta.max_query_len == 1 and meta.num_seqs <= self.sizes[-1]

    def run(self, batch: StepBatch) -> torch.Tensor:
        """Hidden states [B, hidden] of an all-decode batch."""
        meta = batch.attention
        n = meta.num_seqs
        size = next(s for s in self.sizes if s >= n)
        self.input_ids[:n] = batch.input_ids
        self.positions[:n] = batch.positions
        self.slot_mapping[:n] = meta.slot_mapping
        self.slot_mapping[n:size] = -1        # padding rows write nowhere and attend to nothing
        self.context_lens[:n] = meta.context_lens
        self.context_lens[n:size] = 0
        self.block_tables[:n, :meta.block_tables.shape[1]] = meta.block_tables
        self.graphs[size].replay()
        return self.hidden[:n]
