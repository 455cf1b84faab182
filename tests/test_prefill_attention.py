"""The plain-torch path's prefill attention (layers.attention, CPU): whole prompts of a step go in one padded,
causal, fused call (paged_attention_ref.whole_prompt_attention); it must equal one masked call a sequence, and a step
that mixes decodes, whole prompts and prompts after a cached prefix must give each its own rows."""
from __future__ import annotations

import pytest
import torch

from localllm.kernels import paged_attention_ref as ref
from localllm.layers.attention import Attention, AttentionMetadata

HEADS, KV_HEADS, DIM, BLOCK = 6, 2, 16, 8


def _caches(num_blocks: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (num_blocks, BLOCK, KV_HEADS, DIM)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


def _tables(ctx_lens: list[int]) -> torch.Tensor:
    """Each sequence's blocks, handed out in reverse so that no table is the identity."""
    widths = [-(-c // BLOCK) for c in ctx_lens]
    tables = torch.zeros(len(ctx_lens), max(widths) + 1, dtype=torch.int32)
    nxt = sum(widths)
    for i, w in enumerate(widths):
        tables[i, :w] = torch.arange(nxt, nxt - w, -1)
        nxt -= w
    return tables


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_whole_prompts_in_one_call_equal_one_call_each(cache_dtype):
    lengths = [37, 1, 16, 9]
    k_cache, v_cache = _caches(sum(-(-c // BLOCK) for c in lengths) + 1, cache_dtype)
    tables = _tables(lengths)
    starts = [0, 37, 38, 54]
    q = torch.randn(sum(lengths), HEADS, DIM)
    got = ref.whole_prompt_attention(q, k_cache, v_cache, list(tables), starts, lengths, 0.25)
    for i, (start, length) in enumerate(zip(starts, lengths)):
        want = ref.prefill_attention(q[start:start + length], k_cache.float(), v_cache.float(), tables[i], length,
                                     0.25)
        torch.testing.assert_close(got[i], want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 5])
def test_a_mixed_step_gives_every_sequence_its_rows(window):
    """Two decodes, two whole prompts, one prompt after a 12-token cached prefix: the module's output equals the
    reference over the whole step (a sliding window sends every prompt through the one-by-one path)."""
    ctx_lens, q_lens = [20, 3, 11, 25, 14], [1, 1, 11, 25, 2]
    tables = _tables(ctx_lens)
    layer = Attention(HEADS, KV_HEADS, DIM, 0.25, sliding_window=window)
    layer.k_cache, layer.v_cache = _caches(int(tables.max()) + 1, torch.float32, seed=1)
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    q = torch.randn(starts[-1], HEADS, DIM)
    meta = AttentionMetadata(slot_mapping=torch.empty(0), block_tables=tables, context_lens=torch.tensor(ctx_lens),
                             query_start_loc=torch.tensor(starts), num_seqs=5, num_decodes=2, max_query_len=25,
                             max_context_len=25, query_start_loc_host=starts, context_lens_host=ctx_lens)
    out = torch.full_like(q, float("nan"))
    out[:2] = ref.decode_attention(q[:2], layer.k_cache, layer.v_cache, tables[:2], meta.context_lens[:2], 0.25, window)
    layer._prefills(q, out, meta)
    want = ref.paged_attention_varlen(q, layer.k_cache, layer.v_cache, tables, starts, ctx_lens, 0.25, window)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
