"""Plain-torch paged attention: K/V live in fixed-size blocks reached through per-sequence block tables.

Cache layout: [num_blocks, block_size, num_kv_heads, head_dim]. Slot s is block s // block_size, offset
s % block_size. Query heads are grouped over KV heads (GQA). The cache is in q's dtype, or float8_e4m3fn (scale 1:
stored by to_cache, read by from_cache).
"""
from __future__ import annotations

import torch

E4M3_MAX = 448.0   # the largest finite float8_e4m3fn


def to_cache(x: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """x as a cache of cache_dtype holds it: an fp8 (e4m3) cache saturates at +-448 (torch alone would give NaN
    from 480 up), rounding to nearest even as torch does."""
    if cache_dtype == torch.float8_e4m3fn:
        x = x.clamp(-E4M3_MAX, E4M3_MAX)
    return x.to(cache_dtype)


def from_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cache values (gathered blocks) in the dtype attention computes in: an fp8 cache decoded exactly."""
    return x.to(dtype)


def store_kvcache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """Writes k, v [T, Hkv, D] into their cache slots; a negative slot is skipped (a padded token of a CUDA-graph
    batch), as rope_store.norm_rope_store does."""
    keep = slot_mapping >= 0
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    slots = slot_mapping[keep].long()
    for x, cache in ((k, k_cache), (v, v_cache)):
        rows, values = cache.view(-1, num_kv_heads, head_dim), to_cache(x[keep], cache.dtype)
        if cache.dtype == torch.float8_e4m3fn:   # torch has no index_copy_ of float8: copy the bytes
            rows, values = rows.view(torch.uint8), values.view(torch.uint8)
        rows.index_copy_(0, slots, values)


def _visible(query_pos: torch.Tensor, key_pos: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    mask = key_pos[None, :] <= query_pos[:, None]
    if sliding_window:
        mask &= key_pos[None, :] > query_pos[:, None] - sliding_window
    return mask


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """One query token per sequence, at position context_len - 1. q: [B, H, D] -> [B, H, D]."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    k = from_cache(k_cache[block_tables].reshape(batch, -1, num_kv_heads, head_dim), q.dtype)
    v = from_cache(v_cache[block_tables].reshape(batch, -1, num_kv_heads, head_dim), q.dtype)
    scores = torch.einsum("bhgd,blhd->bhgl", q.view(batch, num_kv_heads, group, head_dim), k) * scale
    key_pos = torch.arange(k.shape[1], device=q.device)
    visible = key_pos[None, :] < context_lens[:, None]
    if sliding_window:
        visible &= key_pos[None, :] >= context_lens[:, None] - sliding_window
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.einsum("bhgl,blhd->bhgd", probs, v).reshape(batch, num_heads, head_dim)


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                      context_len: int, scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """The last q.shape[0] tokens of one sequence of context_len tokens (earlier ones may be a cached prefix),
    causal. q: [Lq, H, D] -> [Lq, H, D]."""
    num_queries, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    num_blocks = -(-context_len // block_size)
    k = from_cache(k_cache[block_table[:num_blocks]].reshape(-1, num_kv_heads, head_dim)[:context_len], q.dtype)
    v = from_cache(v_cache[block_table[:num_blocks]].reshape(-1, num_kv_heads, head_dim)[:context_len], q.dtype)
    group = num_heads // num_kv_heads
    k = k.repeat_interleave(group, dim=1).transpose(0, 1)
    v = v.repeat_interleave(group, dim=1).transpose(0, 1)
    query_pos = torch.arange(context_len - num_queries, context_len, device=q.device)
    mask = _visible(query_pos, torch.arange(context_len, device=q.device), sliding_window)
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def whole_prompt_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: list[torch.Tensor], query_starts: list[int], lengths: list[int],
                           scale: float) -> list[torch.Tensor]:
    """prefill_attention of several sequences whose queries are their whole context (no cached prefix, no sliding
    window), in one call: padded at the end to the longest, where the causal mask hides the padding from every real
    query, so that torch takes its fused (flash) kernel over [B, H, L, D] instead of one masked math-path call a
    sequence (which took 0.35 s of the embedded model's 16 x 128-token prefill on the CPU). q: the step's [T, H, D];
    returns each sequence's [length, H, D]."""
    batch, longest = len(lengths), max(lengths)
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    qs = q.new_zeros(batch, longest, num_heads, head_dim)
    ks = q.new_zeros(batch, longest, num_kv_heads, head_dim)
    vs = torch.zeros_like(ks)
    for b, (table, start, length) in enumerate(zip(block_tables, query_starts, lengths)):
        blocks = table[:-(-length // block_size)]
        qs[b, :length] = q[start:start + length]
        ks[b, :length] = from_cache(k_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:length], q.dtype)
        vs[b, :length] = from_cache(v_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:length], q.dtype)
    group = num_heads // num_kv_heads
    out = torch.nn.functional.scaled_dot_product_attention(
        qs.transpose(1, 2), ks.repeat_interleave(group, dim=2).transpose(1, 2),
        vs.repeat_interleave(group, dim=2).transpose(1, 2), is_causal=True, scale=scale).transpose(1, 2)
    return [out[b, :length] for b, length in enumerate(lengths)]


def paged_attention_varlen(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           query_start_loc: torch.Tensor | list[int], context_lens: torch.Tensor | list[int],
                           scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """Reference of kernels.paged_attention.paged_attention: a whole step at once. Sequence i owns the query rows
    query_start_loc[i]:query_start_loc[i + 1] of q [T, H, D], which are the last positions of its context_lens[i]
    tokens (decodes, prefills, chunks after a cached prefix alike), causal. Returns [T, H, D]."""
    starts = [int(x) for x in query_start_loc]
    lens = [int(x) for x in context_lens]
    out = torch.zeros_like(q)
    for i, context_len in enumerate(lens):
        start, end = starts[i], starts[i + 1]
        if end > start:
            out[start:end] = prefill_attention(q[start:end], k_cache, v_cache, block_tables[i], context_len, scale,
                                               sliding_window)
    return out
