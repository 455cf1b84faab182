"""Every Triton kernel of localllm.kernels against its plain-torch reference, on small shapes, run on the CPU by
Triton's interpreter (tests/triton_interpreter.py: in a child process unless this one already interprets)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

triton = pytest.importorskip("triton")

from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402


def test_kernels_under_triton_interpreter():
    """Runs the kernel tests of this file in a child process where Triton interprets."""
    run_under_interpreter(__file__)


@pytest.fixture(scope="module")
def K():
    from localllm.kernels import activation, paged_attention, rmsnorm
    return SimpleNamespace(paged_attention=paged_attention, rmsnorm=rmsnorm, activation=activation)


# the references: plain torch, no triton
from localllm.kernels import paged_attention_ref as ref  # noqa: E402
from localllm.kernels.activation_ref import silu_and_mul_ref  # noqa: E402
from localllm.kernels.rmsnorm_ref import rms_norm_ref  # noqa: E402


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _paged_setup(ctx_lens, q_lens, num_heads, num_kv_heads, head_dim, block_size, dtype=torch.float32, seed=0,
                 extra_cols=2, kv_dtype=None):
    """A cache filled with random K/V, blocks handed out in a random order, tables padded with 0 columns. kv_dtype:
    the cache's, when not q's (float8_e4m3fn: an fp8 cache, of values up to a few tens, as K after its norm)."""
    g = _gen(seed)
    blocks_per_seq = [-(-c // block_size) for c in ctx_lens]
    num_blocks = sum(blocks_per_seq) + 3
    spread = 8.0 if kv_dtype == torch.float8_e4m3fn else 1.0
    k_cache = (torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g) * spread).to(kv_dtype or dtype)
    v_cache = (torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g) * spread).to(kv_dtype or dtype)
    order = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    width = max(blocks_per_seq) + extra_cols
    tables = torch.zeros(len(ctx_lens), width, dtype=torch.int32)
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor(q_lens).cumsum(0)
    q = torch.randn(int(qsl[-1]), num_heads, head_dim, generator=g).to(dtype)
    return q, k_cache, v_cache, tables, qsl, torch.tensor(ctx_lens, dtype=torch.int32)


def _check_attention(K, ctx_lens, q_lens, num_heads, num_kv_heads, head_dim, block_size, window=None,
                     dtype=torch.float32, atol=2e-5, kv_dtype=None, **kwargs):
    """The kernel against the reference over the same cache, decoded to float32 (an fp8 cache's exact values)."""
    q, kc, vc, tables, qsl, ctx = _paged_setup(ctx_lens, q_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
                                               kv_dtype=kv_dtype)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))   # poisoned: every row must be written
    res = K.paged_attention.paged_attention(q, kc, vc, tables, qsl, ctx, scale, window, out=out,
                                            max_query_len=max(q_lens), max_context_len=max(ctx_lens), **kwargs)
    assert res is out
    want = ref.paged_attention_varlen(q.float(), kc.float(), vc.float(), tables, qsl, ctx, scale, window)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), want, atol=atol, rtol=atol)
    return q, kc, vc, tables, qsl, ctx, out


# --- paged attention: varlen (mixed decode / prefill / chunked prefill) ----------------------------------------

# sequences: two decodes, a prefill after a cached prefix, a fresh prefill, a later chunk of a chunked prefill
MIXED_CTX = [5, 37, 25, 13, 30]
MIXED_Q = [1, 1, 9, 13, 6]


@pytest.mark.parametrize("group,head_dim,block_size", [
    (1, 16, 16), (2, 16, 4), (4, 16, 8), (1, 64, 4), (2, 64, 16), (4, 128, 16), (2, 128, 8), (4, 24, 4),
])
def test_paged_attention_mixed_batch(K, group, head_dim, block_size):
    num_kv_heads = 2
    _check_attention(K, MIXED_CTX, MIXED_Q, group * num_kv_heads, num_kv_heads, head_dim, block_size)


def test_paged_attention_long_prefill_spans_several_query_tiles(K):
    # q_len 40 with group 1 gives 32-row tiles in the interpreter: several tiles per sequence, several key tiles each
    _check_attention(K, [70, 40, 3], [40, 40, 1], 2, 2, 16, 8)


def test_paged_attention_with_gpu_tile_sizes(K, monkeypatch):
    # the tiles the GPU gets (128-row query tiles, 64-key tiles, 64-key split-K steps), here in the interpreter
    monkeypatch.setattr(K.paged_attention, "GPU_TILES_EVERYWHERE", True)
    _check_attention(K, [150, 40, 7, 90], [1, 40, 7, 70], 8, 2, 16, 16)
    _check_attention(K, [150, 40, 7, 90], [1, 40, 7, 70], 8, 2, 16, 16, window=33)
    _check_attention(K, [300, 17, 129], [1, 1, 1], 4, 1, 16, 16, split_kv=True, partition_size=64)


def test_paged_attention_random_batches(K):
    g = _gen(7)
    for trial in range(4):
        num_seqs = int(torch.randint(1, 6, (1,), generator=g))
        q_lens = torch.randint(1, 24, (num_seqs,), generator=g).tolist()
        q_lens = [1 if torch.rand(1, generator=g) < 0.4 else n for n in q_lens]
        ctx_lens = [n + int(torch.randint(0, 40, (1,), generator=g)) for n in q_lens]
        window = [None, 8, 30][trial % 3]
        _check_attention(K, ctx_lens, q_lens, 4, 2, 16, [4, 8, 16][trial % 3], window=window)


def test_paged_attention_odd_group_and_tiny_head_dim(K):
    # group 3 (rows padded to 16), head_dim 8 (padded to 16 lanes)
    _check_attention(K, [9, 20], [1, 7], 6, 2, 8, 4)


def test_paged_attention_fp16(K):
    _check_attention(K, MIXED_CTX, MIXED_Q, 4, 2, 32, 8, dtype=torch.float16, atol=2e-3)


@pytest.mark.parametrize("window", [4, 11, 64])
def test_paged_attention_sliding_window(K, window):
    _check_attention(K, [5, 37, 25, 30], [1, 1, 9, 20], 4, 2, 16, 4, window=window)


def test_paged_attention_decode_batch_matches_decode_reference(K):
    ctx_lens = [1, 7, 16, 33, 50]
    q, kc, vc, tables, qsl, ctx, out = _check_attention(K, ctx_lens, [1] * 5, 8, 2, 16, 8, split_kv=False)
    want = ref.decode_attention(q, kc, vc, tables, ctx, 16 ** -0.5)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


# --- split-K (flash decoding) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("group,head_dim,block_size,window", [(4, 16, 16, None), (2, 64, 8, None), (1, 16, 4, 50)])
def test_split_k_decode_long_context(K, group, head_dim, block_size, window):
    # contexts of a few hundred tokens over 32-token partitions: up to 10 partitions per sequence, uneven last ones
    _check_attention(K, [300, 17, 129], [1, 1, 1], 2 * group, 2, head_dim, block_size, window=window,
                     split_kv=True, partition_size=32)


def test_split_k_is_chosen_automatically_for_long_decodes(K, monkeypatch):
    from localllm.kernels import paged_attention_split as split

    assert split.use_split_kv(1, split.SPLIT_MIN_CONTEXT + 1)
    assert split.use_split_kv(1, 4096)
    assert not split.use_split_kv(1, split.SPLIT_MIN_CONTEXT)      # short contexts
    assert not split.use_split_kv(2, 100_000)                       # not all decodes
    assert split.use_split_kv(1, 100_000)       # a full grid still balances long and short contexts
    large = split._split_config(256, 8, 4096, True, 132)
    assert large["PARTITION"] == 512 and large["MIN_PARTITION"] == split.BALANCE_MIN_PARTITION   # 8 partitions
    assert split._split_config(256, 8, 40960, True, 132)["PARTITION"] == 8192                 # at most 8
    assert split._split_config(256, 8, 300, True, 132)["PARTITION"] == 256                    # 2 of >= 256 tokens
    assert split._split_config(4, 8, 4096, True, 132)["MIN_PARTITION"] == 64                  # small batch as before
    calls = []
    original = split._decode_split_kernel

    class Spy:
        def __getitem__(self, grid):
            calls.append(grid)
            return original[grid]

    monkeypatch.setattr(split, "SPLIT_MIN_CONTEXT", 64)
    monkeypatch.setattr(split, "_decode_split_kernel", Spy())
    _check_attention(K, [200, 65], [1, 1], 4, 2, 16, 16, partition_size=32)
    assert calls and calls[0][2] == 7   # ceil(200 / 32) partitions


def test_decode_of_empty_padded_sequence_is_zero_not_nan(K):
    # CUDA-graph padding: a sequence with context 0 must not poison the output with NaN
    for split in (False, True):
        q, kc, vc, tables, qsl, ctx = _paged_setup([40, 1], [1, 1], 2, 1, 16, 8)
        ctx[1] = 0
        out = K.paged_attention.paged_attention(q, kc, vc, tables, qsl, ctx, 0.25, max_query_len=1,
                                                max_context_len=40, split_kv=split, partition_size=16)
        assert torch.isfinite(out).all() and torch.all(out[1] == 0)
        want = ref.decode_attention(q[:1], kc, vc, tables[:1], ctx[:1], 0.25)
        torch.testing.assert_close(out[:1], want, atol=2e-5, rtol=2e-5)


def test_paged_attention_int64_metadata(K):
    # the engine's batch builder may hand int64 tensors; the kernels accept them as well as int32
    q, kc, vc, tables, qsl, ctx = _paged_setup(MIXED_CTX, MIXED_Q, 4, 2, 16, 8)
    want = ref.paged_attention_varlen(q, kc, vc, tables, qsl, ctx, 0.25)
    out = K.paged_attention.paged_attention(q, kc, vc, tables.long(), qsl.long(), ctx.long(), 0.25,
                                            max_query_len=13, max_context_len=37)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    q, kc, vc, tables, qsl, ctx = _paged_setup([100, 7], [1, 1], 4, 2, 16, 8)
    out = K.paged_attention.paged_attention(q, kc, vc, tables.long(), qsl.long(), ctx.long(), 0.25,
                                            max_query_len=1, max_context_len=100, split_kv=True, partition_size=32)
    torch.testing.assert_close(out, ref.decode_attention(q, kc, vc, tables, ctx, 0.25), atol=2e-5, rtol=2e-5)


def test_sequences_without_queries_are_skipped(K):
    # a sequence with q_len 0 (first, in the middle, last) owns no row: nothing is written for it, the rest is right
    for split in (False, True):
        q, kc, vc, tables, qsl, ctx = _paged_setup([30, 40, 9, 50], [0, 1, 0, 1], 2, 1, 16, 8)
        out = torch.full_like(q, float("nan"))
        K.paged_attention.paged_attention(q, kc, vc, tables, qsl, ctx, 0.25, out=out, max_query_len=1,
                                          max_context_len=50, split_kv=split, partition_size=16)
        torch.testing.assert_close(out, ref.paged_attention_varlen(q, kc, vc, tables, qsl, ctx, 0.25),
                                   atol=2e-5, rtol=2e-5)
    q, kc, vc, tables, qsl, ctx = _paged_setup([30, 40, 9, 50], [0, 5, 0, 1], 2, 1, 16, 8)
    out = torch.full_like(q, float("nan"))
    K.paged_attention.paged_attention(q, kc, vc, tables, qsl, ctx, 0.25, out=out, max_query_len=5,
                                      max_context_len=50)
    torch.testing.assert_close(out, ref.paged_attention_varlen(q, kc, vc, tables, qsl, ctx, 0.25),
                               atol=2e-5, rtol=2e-5)


def test_paged_attention_strided_q_view(K):
    # q as a view of a fused qkv projection (token stride != H * D)
    q, kc, vc, tables, qsl, ctx = _paged_setup([12, 20], [4, 20], 4, 2, 16, 4)
    fused = torch.randn(q.shape[0], 4 * 16 + 2 * 2 * 16)
    fused[:, :64] = q.reshape(q.shape[0], -1)
    qv = fused[:, :64].view(q.shape[0], 4, 16)
    out = K.paged_attention.paged_attention(qv, kc, vc, tables, qsl, ctx, 0.25, max_query_len=20,
                                            max_context_len=20)
    want = ref.paged_attention_varlen(q, kc, vc, tables, qsl, ctx, 0.25)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


# --- an fp8 (e4m3) KV cache: every path decodes it as it loads ------------------------------------------------

FP8 = torch.float8_e4m3fn


# float16 stands for the GPU's bfloat16: the interpreter's bfloat16 dot is wrong, with a bfloat16 cache as well
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float16, 3e-2)])
def test_paged_attention_over_an_fp8_cache(K, dtype, atol):
    # one-pass decodes and prefills (mixed), a sliding window, split-K decodes
    _check_attention(K, MIXED_CTX, MIXED_Q, 4, 2, 16, 8, dtype=dtype, atol=atol, kv_dtype=FP8)
    _check_attention(K, [5, 37, 25, 30], [1, 1, 9, 20], 4, 2, 16, 4, window=11, dtype=dtype, atol=atol,
                     kv_dtype=FP8)
    _check_attention(K, [300, 17, 129], [1, 1, 1], 4, 2, 64, 8, dtype=dtype, atol=atol, kv_dtype=FP8,
                     split_kv=True, partition_size=32)
    _check_attention(K, [40, 7, 33], [1, 1, 1], 8, 2, 16, 16, dtype=dtype, atol=atol, kv_dtype=FP8, split_kv=False)


def test_paged_attention_over_an_fp8_cache_with_gpu_tile_sizes(K, monkeypatch):
    monkeypatch.setattr(K.paged_attention, "GPU_TILES_EVERYWHERE", True)
    _check_attention(K, [150, 40, 7, 90], [1, 40, 7, 70], 8, 2, 16, 16, kv_dtype=FP8)
    _check_attention(K, [300, 17, 129], [1, 1, 1], 4, 1, 16, 16, kv_dtype=FP8, split_kv=True, partition_size=64)


def test_references_read_an_fp8_cache_as_its_decoded_values():
    q, kc, vc, tables, qsl, ctx = _paged_setup(MIXED_CTX, MIXED_Q, 4, 2, 16, 8, kv_dtype=FP8)
    assert kc.dtype == FP8 and kc.float().abs().max() > 8   # values of several binades, rounded to e4m3
    decoded = (kc.float(), vc.float())
    assert torch.equal(ref.paged_attention_varlen(q, kc, vc, tables, qsl, ctx, 0.25),
                       ref.paged_attention_varlen(q, *decoded, tables, qsl, ctx, 0.25))
    q, kc, vc, tables, qsl, ctx = _paged_setup([9, 40], [1, 1], 4, 2, 16, 8, kv_dtype=FP8)
    assert torch.equal(ref.decode_attention(q, kc, vc, tables, ctx, 0.25, 16),
                       ref.decode_attention(q, kc.float(), vc.float(), tables, ctx, 0.25, 16))


def test_store_into_an_fp8_cache_rounds_as_torch_and_saturates():
    # the reference store: torch's round to nearest even, with +-448 for what torch would make NaN (>= 480)
    # ties 1.0625 -> 1.0 and 1.1875 -> 1.25 (even mantissas), the subnormal 1e-3 -> 2^-9, 464 -> 448 and beyond
    k = torch.tensor([1.0625, 1.1875, -1e-3, 447.9, 464.0, 1e4, -1e4, -0.0]).view(8, 1, 1)
    kc, vc = torch.zeros(2, 4, 2, 1, 1, dtype=FP8).unbind(0)
    ref.store_kvcache(k, -k, kc, vc, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]))
    want = [1.0, 1.25, -2 ** -9, 448.0, 448.0, 448.0, -448.0, -0.0]
    assert kc.flatten().float().tolist() == want and vc.flatten().float().tolist() == [-x for x in want]
    assert torch.equal(kc.flatten()[:5].view(torch.uint8), k.flatten()[:5].to(FP8).view(torch.uint8))
    assert kc.flatten()[7].view(torch.uint8) == 0x80   # -0 keeps its sign


# --- rmsnorm, activation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", [64, 48])
def test_rms_norm(K, hidden):
    g = _gen(2)
    x = torch.randn(5, hidden, generator=g)
    residual = torch.randn(5, hidden, generator=g)
    weight = torch.rand(hidden, generator=g) + 0.5
    torch.testing.assert_close(K.rmsnorm.rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6))
    normed, new_res = K.rmsnorm.rms_norm(x, weight, 1e-6, residual)
    want_normed, want_res = rms_norm_ref(x, weight, 1e-6, residual)
    torch.testing.assert_close(normed, want_normed)
    torch.testing.assert_close(new_res, want_res)
    # in place: x becomes normed, residual becomes x + residual; 3-D input (per-head q/k norm style)
    x3, r3 = x.clone().view(5, -1, 16), residual.clone().view(5, -1, 16)
    w16 = weight[:16].contiguous()
    want_normed, want_res = rms_norm_ref(x3.clone(), w16, 1e-5, r3.clone())
    got_normed, got_res = K.rmsnorm.rms_norm(x3, w16, 1e-5, r3, inplace=True)
    assert got_normed is x3 and got_res is r3
    torch.testing.assert_close(x3, want_normed)
    torch.testing.assert_close(r3, want_res)


def test_rms_norm_matches_layer_arithmetic_fp16(K):
    g = _gen(3)
    x = torch.randn(4, 64, generator=g).half()
    residual = torch.randn(4, 64, generator=g).half()
    weight = (torch.rand(64, generator=g) + 0.5).half()
    normed, new_res = K.rmsnorm.rms_norm(x, weight, 1e-6, residual)
    want_normed, want_res = rms_norm_ref(x, weight, 1e-6, residual)
    assert torch.equal(new_res, want_res)
    torch.testing.assert_close(normed, want_normed, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("shape", [(6, 2 * 48), (2, 3, 2 * 64)])
def test_silu_and_mul(K, shape):
    x = torch.randn(*shape, generator=_gen(5))
    got = K.activation.silu_and_mul(x)
    assert got.shape == (*shape[:-1], shape[-1] // 2)
    torch.testing.assert_close(got, silu_and_mul_ref(x))
    gate, up = x.chunk(2, -1)
    torch.testing.assert_close(got, torch.nn.functional.silu(gate) * up)


def test_silu_and_mul_in_bfloat16_rounds_as_torch(K):
    """bf16 models round silu(gate) before the product, as transformers' MLP does: the same bits."""
    x = torch.randn(5, 2 * 80, generator=_gen(6)).bfloat16()
    gate, up = x.chunk(2, -1)
    assert torch.equal(K.activation.silu_and_mul(x), torch.nn.functional.silu(gate) * up)


collect_one_mode(globals(), "test_kernels_under_triton_interpreter")
