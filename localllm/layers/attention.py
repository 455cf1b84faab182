"""Attention over the paged KV cache. The per-step layout arrives as an explicit AttentionMetadata."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from localllm.kernels import paged_attention_ref as ref


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor      # [T] cache slot of every token of this step
    block_tables: torch.Tensor      # [B, max_blocks] block ids per sequence, padded with 0
    context_lens: torch.Tensor      # [B] tokens of each sequence in the cache once this step's are written
    num_decodes: int                # sequences (and tokens) 0..num_decodes-1 have exactly one query token
    query_start_loc: list[int]      # host copy, B + 1 entries: where each sequence's tokens start
    context_lens_host: list[int]


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 sliding_window: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        # the runner points these at this layer's slice of the KV pool
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q: [T, H, D], k/v: [T, Hkv, D] for this step's tokens -> [T, H, D]."""
        ref.store_kvcache(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        n = meta.num_decodes
        if n:
            out[:n] = ref.decode_attention(q[:n], self.k_cache, self.v_cache, meta.block_tables[:n],
                                           meta.context_lens[:n], self.scale, self.sliding_window)
        for i in range(n, len(meta.context_lens_host)):
            start, end = meta.query_start_loc[i], meta.query_start_loc[i + 1]
            out[start:end] = ref.prefill_attention(q[start:end], self.k_cache, self.v_cache, meta.block_tables[i],
                                                   meta.context_lens_host[i], self.scale, self.sliding_window)
        return out
