"""The Triton paged-attention kernel on verifying steps laid out uniformly, as the verify CUDA graphs replay them
(engine/batch.py, VerifyLayout): query_len rows per sequence, its real rows first and padding after, each context
counting its padding, block tables exactly as wide as the padded contexts need (the columns past a sequence's own
blocks 0), and the graph's extra sequences (context 0). Under Triton's interpreter (tests/triton_interpreter.py).
The real rows must equal the reference on the unpadded layout although the padding's keys, which the kernel reads
and masks, hold random values; the extra sequences' rows are zeros."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402

from localllm.kernels import paged_attention_ref as ref  # noqa: E402


def test_verify_layout_kernels_under_triton_interpreter():
    """Runs the kernel tests of this file in a child process where Triton interprets."""
    run_under_interpreter(__file__)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _uniform_step(real_ctx, real_q, query_len, extra_seqs, num_heads, num_kv_heads, head_dim, block_size):
    """A cache of random values, the sequences' blocks in a random order (never block 0), and the padded step."""
    g = torch.Generator().manual_seed(sum(real_ctx) + query_len)
    padded_ctx = [c + query_len - n for c, n in zip(real_ctx, real_q)] + [0] * extra_seqs
    own_blocks = [_cdiv(c, block_size) for c in real_ctx]
    num_blocks = sum(own_blocks) + 2
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    order = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    tables = torch.zeros(len(padded_ctx), max(_cdiv(c, block_size) for c in padded_ctx), dtype=torch.int32)
    for i, n in enumerate(own_blocks):
        tables[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    q = torch.randn(len(padded_ctx) * query_len, num_heads, head_dim, generator=g)
    query_start_loc = torch.arange(0, q.shape[0] + 1, query_len, dtype=torch.int32)
    return q, k_cache, v_cache, tables, query_start_loc, torch.tensor(padded_ctx, dtype=torch.int32)


def _check_uniform(real_ctx, real_q, query_len, extra_seqs, group, head_dim, block_size, window=None):
    num_kv_heads = 2
    q, kc, vc, tables, qsl, ctx = _uniform_step(real_ctx, real_q, query_len, extra_seqs, group * num_kv_heads,
                                                num_kv_heads, head_dim, block_size)
    from localllm.kernels.paged_attention import paged_attention

    out = torch.full_like(q, float("nan"))   # poisoned: every row must be written
    paged_attention(q, kc, vc, tables, qsl, ctx, head_dim ** -0.5, window, out=out, max_query_len=query_len,
                    max_context_len=512)
    assert torch.isfinite(out).all()
    real_rows = torch.cat([torch.arange(i * query_len, i * query_len + n) for i, n in enumerate(real_q)])
    real_starts = torch.tensor([0] + real_q).cumsum(0)
    want = ref.paged_attention_varlen(q[real_rows], kc, vc, tables, real_starts, real_ctx, head_dim ** -0.5, window)
    torch.testing.assert_close(out[real_rows], want, atol=2e-5, rtol=2e-5)
    assert torch.all(out[len(real_q) * query_len:] == 0)


# a plain decode whose padded context enters a block it does not own, drafts filling all rows, a short context
# with drafts, and a decode at a block boundary
REAL_CTX = [8, 21, 4, 16]
REAL_Q = [1, 5, 3, 1]


@pytest.mark.parametrize("group,head_dim,block_size", [(1, 16, 4), (2, 16, 8), (4, 32, 16), (3, 24, 4)])
def test_uniform_verify_step(group, head_dim, block_size):
    _check_uniform(REAL_CTX, REAL_Q, 5, 0, group, head_dim, block_size)


@pytest.mark.parametrize("window", [None, 3, 6])
def test_uniform_verify_step_with_graph_padding_sequences(window):
    _check_uniform(REAL_CTX, REAL_Q, 5, 4, 2, 16, 4, window)


def test_uniform_verify_step_with_gpu_tile_sizes(monkeypatch):
    """The GPU's 64-row query tiles hold the rows of several sequences, padding included."""
    from localllm.kernels import paged_attention

    monkeypatch.setattr(paged_attention, "GPU_TILES_EVERYWHERE", True)
    _check_uniform(REAL_CTX + [70, 33], REAL_Q + [17, 2], 17, 2, 2, 16, 16)
    _check_uniform(REAL_CTX, REAL_Q, 5, 3, 4, 16, 16, window=7)


collect_one_mode(globals(), "test_verify_layout_kernels_under_triton_interpreter")
