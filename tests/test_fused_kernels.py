"""The fused Triton kernels (q/k norm + rotary + K/V store; split-K decode sized per sequence) against their
plain-torch references, on small shapes under Triton's interpreter (tests/triton_interpreter.py)."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402

from localllm.kernels.rope_store_ref import norm_rope_store_ref  # noqa: E402
from localllm.kernels.rotary_ref import rotary_ref  # noqa: E402


def test_fused_kernels_under_triton_interpreter():
    """Runs the kernel tests of this file in a child process where Triton interprets."""
    run_under_interpreter(__file__)


def _rope_cache(head_dim: int, max_pos: int):
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    emb = torch.outer(torch.arange(max_pos).float(), inv).repeat(1, 2)
    return emb.cos(), emb.sin()


def _rope_store_case(num_heads, num_kv_heads, head_dim, block_size, dtype, with_norm, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens, num_blocks = 7, 5
    qkv = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=g).to(dtype)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q, k, v = (x.view(tokens, -1, head_dim) for x in (q, k, v))
    positions = torch.randint(0, 40, (tokens,), generator=g)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens].to(torch.int32)
    slots[2] = -1   # a padding row: stores nothing
    cos, sin = _rope_cache(head_dim, 40)
    caches = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    weights = [(torch.rand(head_dim, generator=g) + 0.5).to(dtype) for _ in range(2)] if with_norm else [None, None]
    return positions, q, k, v, cos, sin, caches, slots, weights


def test_rotary_reference_is_the_rotate_half_formula():
    g = torch.Generator().manual_seed(4)
    cos, sin = _rope_cache(16, 64)
    positions = torch.randint(0, 64, (7,), generator=g)
    q, k = torch.randn(7, 4, 16, generator=g), torch.randn(7, 2, 16, generator=g)
    want_q, want_k = rotary_ref(positions, q, k, cos, sin)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    for x, want in ((q, want_q), (k, want_k)):
        torch.testing.assert_close(want, x * c + torch.cat((-x[..., 8:], x[..., :8]), -1) * s)


def test_bfloat16_rotary_rounds_as_transformers():
    """In bf16 the rotation rounds where transformers' apply_rotary_pos_emb does (cos and sin, each product, the
    sum): the reference and the fused kernel give its very bits, so bf16 greedy near-ties go its way."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from localllm.kernels.rope_store import norm_rope_store

    positions, q, k, v, cos, sin, caches, slots, _ = _rope_store_case(4, 2, 32, 4, torch.bfloat16, False, 5)
    rows = (cos[positions][None].to(torch.bfloat16), sin[positions][None].to(torch.bfloat16))
    want_q, want_k = (x[0].transpose(0, 1) for x in apply_rotary_pos_emb(q.transpose(0, 1)[None],
                                                                          k.transpose(0, 1)[None], *rows))
    ref_q, ref_k = rotary_ref(positions, q, k, cos, sin)
    assert torch.equal(ref_q, want_q) and torch.equal(ref_k, want_k)
    norm_rope_store(positions, q, k, v, cos, sin, caches[0], caches[1], slots)
    assert torch.equal(q, want_q)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size", [(4, 2, 16, 4), (3, 1, 24, 8)])
@pytest.mark.parametrize("with_norm", [False, True])
def test_norm_rope_store_float32(num_heads, num_kv_heads, head_dim, block_size, with_norm):
    from localllm.kernels.rope_store import norm_rope_store

    positions, q, k, v, cos, sin, caches, slots, (qw, kw) = _rope_store_case(
        num_heads, num_kv_heads, head_dim, block_size, torch.float32, with_norm)
    want_caches = caches.clone()
    want_q = norm_rope_store_ref(positions, q.clone(), k, v, cos, sin, want_caches[0], want_caches[1], slots,
                                 qw, kw, 1e-6)
    got = norm_rope_store(positions, q, k, v, cos, sin, caches[0], caches[1], slots, qw, kw, 1e-6)
    assert got is q   # rotated in place, in the fused qkv buffer
    torch.testing.assert_close(q, want_q, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(caches, want_caches, atol=1e-6, rtol=1e-6)
    assert torch.equal(caches[1], want_caches[1])   # v is copied, bit for bit
    # the padding row's slot was skipped: the blocks the other rows did not write are untouched
    written = torch.zeros(caches[0].numel() // (num_kv_heads * head_dim), dtype=torch.bool)
    written[slots[slots >= 0].long()] = True
    untouched = ~written.view(caches.shape[1], caches.shape[2])
    assert torch.equal(caches[:, untouched], _rope_store_case(num_heads, num_kv_heads, head_dim, block_size,
                                                              torch.float32, with_norm)[6][:, untouched])


def test_norm_rope_store_bfloat16_within_rounding():
    from localllm.kernels.rope_store import norm_rope_store

    positions, q, k, v, cos, sin, caches, slots, (qw, kw) = _rope_store_case(4, 2, 32, 4, torch.bfloat16, True, 3)
    want_caches = caches.clone()
    want_q = norm_rope_store_ref(positions, q.clone(), k, v, cos, sin, want_caches[0], want_caches[1], slots,
                                 qw, kw, 1e-6)
    norm_rope_store(positions, q, k, v, cos, sin, caches[0], caches[1], slots, qw, kw, 1e-6)
    torch.testing.assert_close(q.float(), want_q.float(), atol=2e-2, rtol=1 / 64)
    torch.testing.assert_close(caches.float(), want_caches.float(), atol=2e-2, rtol=1 / 64)
    assert torch.equal(caches[1], want_caches[1])   # v is copied, bit for bit


FP8 = torch.float8_e4m3fn


def _e4m3_ties_and_extremes() -> torch.Tensor:
    """Every finite e4m3 value, the midpoints between neighbours (ties), values just off them, and values past the
    largest (448, 464 = the tie with the would-be 480, 1e4, inf) of both signs."""
    values = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    values = values[values.isfinite()].unique()
    mids = (values[1:] + values[:-1]) / 2
    extra = torch.tensor([464.0, 470.0, 479.0, 1e4, float("inf"), 1e-9, 3e-3])
    out = torch.cat([values, mids, mids * (1 + 2 ** -20), mids * (1 - 2 ** -20), extra, -extra])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_store_rounds_as_torch_and_saturates(dtype):
    """V goes into an fp8 cache as it comes (no rotation): its bytes are exactly torch's .to(float8_e4m3fn) of the
    value clamped to +-448, over every e4m3 value, every tie between two of them and both sides of every tie (in
    float32), every finite bfloat16 value (in bfloat16), and values past the largest."""
    from localllm.kernels.rope_store import norm_rope_store

    if dtype == torch.float32:
        values = _e4m3_ties_and_extremes()
    else:
        values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
        values = values[values.isfinite()]
    head_dim, kv_heads = 64, 4
    tokens = -(-values.numel() // (kv_heads * head_dim))
    v = torch.zeros(tokens * kv_heads * head_dim, dtype=dtype)
    v[:values.numel()] = values.to(dtype)
    v = v.view(tokens, kv_heads, head_dim)
    q, k = torch.zeros(tokens, kv_heads, head_dim, dtype=dtype), torch.zeros_like(v)
    cos, sin = _rope_cache(head_dim, 4)
    k_cache, v_cache = torch.zeros(2, tokens, 1, kv_heads, head_dim, dtype=FP8).unbind(0)
    norm_rope_store(torch.zeros(tokens, dtype=torch.int64), q, k, v, cos, sin, k_cache, v_cache,
                    torch.arange(tokens, dtype=torch.int32))
    want = v.float().clamp(-448, 448).to(FP8)
    assert torch.equal(v_cache.view(torch.uint8).flatten(), want.view(torch.uint8).flatten())


@pytest.mark.parametrize("with_norm", [False, True])
def test_norm_rope_store_into_an_fp8_cache(with_norm):
    """The rotated K within one e4m3 step of the reference's (whose bfloat16 rotation and norm may end an ulp
    away, on the other side of an e4m3 rounding boundary; the rounding itself is checked exactly above, on V);
    V bit for bit; the padding row's slot untouched (the caches are compared whole)."""
    from localllm.kernels.rope_store import norm_rope_store

    positions, q, k, v, cos, sin, caches, slots, (qw, kw) = _rope_store_case(4, 2, 32, 4, torch.bfloat16,
                                                                               with_norm, 3)
    caches = (caches.float() * 16).to(FP8)   # K/V of several binades, past 448 too: saturated
    k, v = k * 40, v * 200
    want_caches = caches.clone()
    want_q = norm_rope_store_ref(positions, q.clone(), k, v, cos, sin, want_caches[0], want_caches[1], slots,
                                 qw, kw, 1e-6)
    norm_rope_store(positions, q, k, v, cos, sin, caches[0], caches[1], slots, qw, kw, 1e-6)
    torch.testing.assert_close(q.float(), want_q.float(), atol=2e-2, rtol=1 / 64)
    assert torch.equal(caches[1].view(torch.uint8), want_caches[1].view(torch.uint8))
    torch.testing.assert_close(caches[0].float(), want_caches[0].float(), atol=2 ** -9, rtol=1 / 8)
    assert caches[1].float().abs().max() == 448   # v * 200 saturates


@pytest.mark.parametrize("qk_norm,kv_dtype", [(False, torch.float32), (True, torch.float32), (True, FP8)])
def test_attention_layer_fused_path_matches_plain_torch_path(qk_norm, kv_dtype):
    """The layer's GPU path (one norm + rotary + store launch, then paged attention), run here by the interpreter,
    against its CPU path, over a step of two decodes and a prefill after a cached prefix; with an fp8 KV pool
    too."""
    from localllm.layers.attention import Attention, AttentionMetadata
    from localllm.layers.norm import RMSNorm
    from localllm.layers.rotary import RotaryEmbedding, StepRotary

    g = torch.Generator().manual_seed(5)
    heads, kv_heads, head_dim, block_size = 4, 2, 16, 4
    rotary = RotaryEmbedding(head_dim, 64, {"rope_theta": 10000.0})
    norms = None
    if qk_norm:
        norms = (RMSNorm(head_dim, 1e-6), RMSNorm(head_dim, 1e-6))
        for n in norms:
            n.weight.data = torch.rand(head_dim, generator=g) + 0.5
    ctx, q_lens = [9, 5, 11], [1, 1, 6]
    tables = torch.tensor([[3, 7, 1], [5, 2, 0], [4, 8, 6]], dtype=torch.int32)
    positions = torch.tensor([8, 4, 5, 6, 7, 8, 9, 10])
    slots = torch.stack([tables[i, p // block_size] * block_size + p % block_size
                         for i, n in enumerate(q_lens) for p in range(ctx[i] - n, ctx[i])]).to(torch.int32)
    qsl = [0, 1, 2, 8]
    meta = AttentionMetadata(slots, tables, torch.tensor(ctx, dtype=torch.int32), torch.tensor(qsl, dtype=torch.int32),
                             num_seqs=3, num_decodes=2, max_query_len=6, max_context_len=11,
                             query_start_loc_host=qsl, context_lens_host=ctx)
    qkv = torch.randn(8, (heads + 2 * kv_heads) * head_dim, generator=g)
    cache = torch.randn(2, 9, block_size, kv_heads, head_dim, generator=g).to(kv_dtype)
    outs, caches = [], []
    for fused in (False, True):
        layer = Attention(heads, kv_heads, head_dim, head_dim ** -0.5)
        pool = cache.clone()
        layer.k_cache, layer.v_cache = pool[0], pool[1]
        q, k, v = (x.view(8, -1, head_dim) for x in qkv.clone().split([64, 32, 32], -1))
        rope = StepRotary(positions, rotary.cos, rotary.sin, True) if fused else rotary.for_step(positions)
        outs.append(layer(rope, q, k, v, meta, norms))
        caches.append(pool)
    # in an fp8 pool, a K a float32 ulp away from the plain path's may round to the neighbouring e4m3 value
    out_tol, cache_atol, cache_rtol = (1e-5, 1e-6, 1e-6) if kv_dtype == torch.float32 else (2e-2, 2 ** -9, 1 / 8)
    torch.testing.assert_close(outs[1], outs[0], atol=out_tol, rtol=out_tol)
    torch.testing.assert_close(caches[1].float(), caches[0].float(), atol=cache_atol, rtol=cache_rtol)


def _decode_inputs(ctx_lens, num_heads, num_kv_heads, head_dim, block_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = [-(-c // block_size) for c in ctx_lens]
    num_blocks = sum(blocks) + 1
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    order = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    tables = torch.zeros(len(ctx_lens), max(blocks) + 2, dtype=torch.int32)
    for i, n in enumerate(blocks):
        tables[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    q = torch.randn(len(ctx_lens), num_heads, head_dim, generator=g)
    qsl = torch.arange(len(ctx_lens) + 1, dtype=torch.int32)
    return q, cache, tables, qsl, torch.tensor(ctx_lens, dtype=torch.int32)


@pytest.mark.parametrize("gpu_tiles,window", [(False, None), (True, 40)])
def test_split_k_decode_under_a_graph_sized_max_context(monkeypatch, gpu_tiles, window):
    """Inside a CUDA graph max_context_len is the model's whole context: each sequence spreads its own context over
    the grid's partitions (one partition, written without the reduction, for a short one; zeros for a padding
    row), and the result is the reference's whatever the bound."""
    from localllm.kernels import paged_attention as pa
    from localllm.kernels import paged_attention_ref as ref

    monkeypatch.setattr(pa, "GPU_TILES_EVERYWHERE", gpu_tiles)
    ctx_lens = [0, 1, 16, 17, 65, 300]
    q, cache, tables, qsl, ctx = _decode_inputs(ctx_lens, 4, 2, 16, 16)
    want = ref.paged_attention_varlen(q, cache[0], cache[1], tables, qsl, ctx, 0.25, window)
    for max_context_len in (300, 1000):
        out = torch.full_like(q, float("nan"))
        pa.paged_attention(q, cache[0], cache[1], tables, qsl, ctx, 0.25, window, out=out, max_query_len=1,
                           max_context_len=max_context_len, split_kv=True)
        assert torch.equal(out[0], torch.zeros_like(out[0]))   # the padding row
        torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


def test_split_k_merge_resets_its_counters():
    """The last partition of each (sequence, KV head) to arrive merges the partials and resets its counter, so a
    second launch (a CUDA graph's replay) counts from zero and gives the same output."""
    from localllm.kernels import paged_attention as pa
    from localllm.kernels import paged_attention_ref as ref
    from localllm.kernels.paged_attention_tile import ArrivalCounters

    q, cache, tables, qsl, ctx = _decode_inputs([10, 200, 0, 300], 4, 2, 16, 16, seed=1)
    want = ref.paged_attention_varlen(q, cache[0], cache[1], tables, qsl, ctx, 0.25)
    outs = []
    for _ in range(2):
        out = torch.full_like(q, 7.0)
        pa.paged_attention(q, cache[0], cache[1], tables, qsl, ctx, 0.25, out=out, max_query_len=1,
                           max_context_len=4096, split_kv=True, partition_size=32)
        assert not ArrivalCounters.buffers[q.device].any()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], want, atol=2e-5, rtol=2e-5)


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


collect_one_mode(globals(), "test_fused_kernels_under_triton_interpreter")
