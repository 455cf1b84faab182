"""Attention over the paged KV cache. The per-step layout arrives as an explicit AttentionMetadata.

On a GPU the Triton kernels of localllm.kernels do the work (one launch normalises and rotates q/k and stores K/V,
one attends for the whole step); elsewhere their plain-torch references do."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from localllm.cpu_kernels import ops
from localllm.kernels import paged_attention_ref as ref
from localllm.layers.norm import RMSNorm
from localllm.layers.rotary import StepRotary


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor      # [T] cache slot of every token of this step (-1 = padding, skipped)
    block_tables: torch.Tensor      # [B, max_blocks] block ids per sequence, padded with 0
    context_lens: torch.Tensor      # [B] tokens of each sequence in the cache once this step's are written
    query_start_loc: torch.Tensor   # [B + 1] where each sequence's tokens start
    num_seqs: int                   # B
    num_decodes: int                # sequences (and tokens) 0..num_decodes-1 have exactly one query token
    max_query_len: int              # upper bounds, fixed per captured CUDA graph
    max_context_len: int
    query_start_loc_host: list[int]  # host copies for the plain-torch path (empty on a GPU)
    context_lens_host: list[int]


def _row_views(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether q, k, v [T, heads, D] have dense heads and one row stride (a size-1 dim's stride is arbitrary)."""
    heads_dense = all(t.stride(2) == 1 and t.stride(1) == t.shape[2] for t in (q, k, v))
    return heads_dense and (q.shape[0] == 1 or q.stride(0) == k.stride(0) == v.stride(0))


class Attention(nn.Module):
    cpu_ops = None   # the compiled CPU kernels, given by layers.cpu_quant.attach_cpu_kernels on the fast path

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

    def forward(self, rope: StepRotary, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
                qk_norms: tuple[RMSNorm, RMSNorm] | None = None) -> torch.Tensor:
        """q: [T, H, D], k/v: [T, Hkv, D] for this step's tokens (views of the qkv projection, q rotated in place on a
        GPU) -> [T, H, D]. qk_norms: the per-head RMSNorms of q and k applied before rotary (Qwen3)."""
        if rope.fused:
            return self._forward_triton(rope, q, k, v, meta, qk_norms)
        if qk_norms is not None:
            q, k = qk_norms[0](q), qk_norms[1](k)
        compiled = self.cpu_ops is not None and q.dtype == torch.float32 and self.k_cache.dtype in ops.KV_DTYPES
        if compiled and _row_views(q, k, v):
            q = ops.rope_store(self.cpu_ops, q, k, v, rope.cos, rope.sin, meta.slot_mapping, self.k_cache,
                               self.v_cache)
        else:
            q, k = rope.apply(q, k)
            ref.store_kvcache(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        n = meta.num_decodes
        if n and compiled:
            out[:n] = ops.decode_attention(self.cpu_ops, q[:n], self.k_cache, self.v_cache, meta.block_tables[:n],
                                           meta.context_lens[:n], self.scale, self.sliding_window)
        elif n:
            out[:n] = ref.decode_attention(q[:n], self.k_cache, self.v_cache, meta.block_tables[:n],
                                           meta.context_lens[:n], self.scale, self.sliding_window)
        self._prefills(q, out, meta)
        return out

    def _prefills(self, q: torch.Tensor, out: torch.Tensor, meta: AttentionMetadata) -> None:
        """out's rows of the sequences after the decodes (plain-torch path). Whole prompts (no cached prefix, no
        sliding window) go in one fused causal call (one masked call a sequence takes torch's math path: 4 s for a
        2,048-token prompt of the embedded model); the others one by one."""
        starts, lens = meta.query_start_loc_host, meta.context_lens_host
        whole, rest = [], []
        for i in range(meta.num_decodes, meta.num_seqs):
            is_whole = self.sliding_window is None and starts[i + 1] - starts[i] == lens[i]
            (whole if is_whole else rest).append(i)
        if whole:
            results = ref.whole_prompt_attention(q, self.k_cache, self.v_cache, [meta.block_tables[i] for i in whole],
                                                 [starts[i] for i in whole], [lens[i] for i in whole], self.scale)
            for i, result in zip(whole, results):
                out[starts[i]:starts[i + 1]] = result
        for i in rest:
            k_cache, v_cache, table = self._caches_of(meta.block_tables[i], lens[i], q.dtype)
            out[starts[i]:starts[i + 1]] = ref.prefill_attention(q[starts[i]:starts[i + 1]], k_cache, v_cache, table,
                                                                 lens[i], self.scale, self.sliding_window)

    def _caches_of(self, table: torch.Tensor, context_len: int, dtype: torch.dtype):
        """The caches and block table a prefill reads: the pool itself, or when the pool is float16 (the compiled
        kernels' KV on the CPU fast path) the sequence's blocks of it in q's dtype."""
        if self.k_cache.dtype == dtype:
            return self.k_cache, self.v_cache, table
        used = table[:-(-context_len // self.k_cache.shape[1])]
        return self.k_cache[used].to(dtype), self.v_cache[used].to(dtype), torch.arange(used.shape[0])

    def _forward_triton(self, rope: StepRotary, q, k, v, meta: AttentionMetadata, qk_norms) -> torch.Tensor:
        from localllm.kernels.paged_attention import paged_attention
        from localllm.kernels.rope_store import norm_rope_store

        weights, eps = ((qk_norms[0].weight, qk_norms[1].weight), qk_norms[0].eps) if qk_norms else ((None, None), 0.0)
        norm_rope_store(rope.positions, q, k, v, rope.cos, rope.sin, self.k_cache, self.v_cache, meta.slot_mapping,
                        *weights, eps)
        return paged_attention(q, self.k_cache, self.v_cache, meta.block_tables, meta.query_start_loc,
                               meta.context_lens, self.scale, self.sliding_window,
                               max_query_len=meta.max_query_len, max_context_len=meta.max_context_len)
