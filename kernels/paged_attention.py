"""Triton paged attention over the KV cache: one varlen launch for a whole step (decodes, prefills, chunked
prefills after a cached prefix), plus a split-K (flash-decoding) path for all-decode steps with long contexts
(paged_attention_split). The tile step both paths share is in paged_attention_tile.

Cache layout [num_blocks, block_size, num_kv_heads, head_dim]; sequence i reaches its token p at block
block_tables[i, p // block_size], offset p % block_size. Its queries are its last q_len positions
(q_len = query_start_loc[i + 1] - query_start_loc[i]), attending causally to all of its context_lens[i] tokens, which
must already be in the cache (rope_store.norm_rope_store first). The reference is
paged_attention_ref.paged_attention_varlen.

Each program handles one KV head and a tile of query rows made of BLOCK_Q tokens x the GROUP query heads that share
that KV head (GQA), so every K/V tile it loads serves the whole group. Rows are padded to a power of two >= 16 so that
tl.dot shapes are legal on the GPU; head_dim is padded to a power of two >= 16 with masks. Softmax is online, in fp32
with exp2. The query tiles of all sequences are laid end to end on grid axis 0 (tile start of sequence i is
query_start_loc[i] // BLOCK_Q + i) and each program finds its sequence by binary search over query_start_loc, so the
launch needs no host copy of the metadata (CUDA-graph friendly).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.paged_attention_split import split_decode, use_split_kv
from localllm.kernels.paged_attention_tile import attend_tile, pow2_at_least

_LOG2E = 1.4426950408889634

# tests: use the GPU's tile sizes on CPU tensors too (the interpreter otherwise gets small tiles, for speed)
GPU_TILES_EVERYWHERE = False


@triton.jit
def _find_seq(qsl_ptr, target, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest i with query_start_loc[i] // BLOCK_Q + i <= target."""
    lo = tl.program_id(0) * 0
    hi = lo + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(qsl_ptr + mid) // BLOCK_Q + mid
        if start <= target:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=["num_seqs", "stride_bt"])
def _paged_attn_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, bt_ptr, qsl_ptr, ctx_ptr,
    scale_log2, window, num_seqs,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    SLIDING: tl.constexpr, IS_DECODE: tl.constexpr, K_ROWS: tl.constexpr = False,
    DOT_PRECISION: tl.constexpr = "tf32",
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    if IS_DECODE:   # every sequence has exactly one query: program i is sequence i
        seq = pid
        tile = 0
    else:
        seq = _find_seq(qsl_ptr, pid, num_seqs, BLOCK_Q)
        tile = pid - (tl.load(qsl_ptr + seq) // BLOCK_Q + seq)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    if tile * BLOCK_Q >= q_len:
        return
    ctx = tl.load(ctx_ptr + seq)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    tok = tile * BLOCK_Q + offs_m // GROUP               # query index within the sequence
    head = kv_head * GROUP + offs_m % GROUP
    row_valid = (offs_m < BLOCK_Q * GROUP) & (tok < q_len)
    q_pos = ctx - q_len + tok
    row = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + row[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_valid[:, None] & d_mask[None, :], other=0.0)

    # keys this tile can see: up to its last query's position; from its first query's window start
    kv_end = ctx - q_len + tl.minimum((tile + 1) * BLOCK_Q, q_len)
    kv_start = 0
    if SLIDING:
        kv_start = tl.maximum(ctx - q_len + tile * BLOCK_Q - window + 1, 0)
        kv_start = (kv_start // BLOCK_N) * BLOCK_N
    # keys below diag_start are visible to every row of the tile (up to the window): no causal mask needed there
    diag_start = ctx - q_len + tile * BLOCK_Q + 1
    diag_start = tl.maximum((diag_start // BLOCK_N) * BLOCK_N, kv_start)

    # the running max starts finite so that fully masked rows give exp2(-inf) = 0, never NaN
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
    for start_n in range(kv_start, diag_start, BLOCK_N):
        acc, m_i, l_i = attend_tile(q, scale_log2, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, kv_head,
                                    start_n, kv_end, q_pos, window,
                                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                    offs_n, offs_d, d_mask, BLOCK_SIZE, SLIDING, False, K_ROWS, DOT_PRECISION)
    for start_n in range(diag_start, kv_end, BLOCK_N):
        acc, m_i, l_i = attend_tile(q, scale_log2, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, kv_head,
                                    start_n, kv_end, q_pos, window,
                                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                    offs_n, offs_d, d_mask, BLOCK_SIZE, SLIDING, True, K_ROWS, DOT_PRECISION)

    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + row[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_mask[None, :])


# Launch configurations, chosen from timings on an H100 (torch 2.11, triton 3.6; Llama-3.1-8B geometry, bf16,
# block size 16, CUDA-graph replays; see scripts/gpu_kernel_check.py --tune). The CPU (interpreter) gets small tiles.

def _decode_config(num_seqs: int, num_kv_heads: int, max_context_len: int, gpu: bool) -> dict:
    if not gpu:
        return dict(BLOCK_N=16, num_warps=4, num_stages=1)
    return dict(BLOCK_N=32 if max_context_len <= 1024 else 128, num_warps=4, num_stages=3, K_ROWS=True)


def _prefill_config(max_query_len: int, group: int, gpu: bool) -> dict:
    """BLOCK_M: query rows (tokens x group heads) per program; K_ROWS: load K tiles row-major and transpose them in
    registers (faster on the H100 than loading them transposed)."""
    if not gpu:
        return dict(BLOCK_M=min(32, pow2_at_least(max_query_len * group, 16)), BLOCK_N=16, num_warps=4,
                    num_stages=1)
    # One tile shape whatever the step's query lengths: each shape is a separate compile (seconds), and a short
    # prompt wastes little in a 64-row tile, as it is bound by reading K/V, not by the rows it computes.
    return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, K_ROWS=True)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    query_start_loc: torch.Tensor, context_lens: torch.Tensor, scale: float,
                    sliding_window: int | None = None, out: torch.Tensor | None = None, *,
                    max_query_len: int, max_context_len: int,
                    split_kv: bool | None = None, partition_size: int | None = None) -> torch.Tensor:
    """Causal paged attention for a whole step; returns out.

    q [T, H, D] (last dim contiguous; token/head strides are free, e.g. a view of a fused qkv output).
    k_cache, v_cache [num_blocks, block_size, Hkv, D] (last dim contiguous), already holding this step's K/V, in q's
    dtype or float8_e4m3fn (an fp8 cache of scale 1, decoded as it is loaded).
    block_tables [B, W]: block ids per sequence; columns past a sequence's blocks are never read (0-padding is fine).
    query_start_loc [B + 1], context_lens [B]: sequence i's queries are rows query_start_loc[i]:query_start_loc[i+1]
    of q, at positions context_lens[i] - q_len ... context_lens[i] - 1 (decode, prefill, prefill after a cached prefix
    and later chunks of a chunked prefill alike). A sequence may have q_len 0 (skipped) or context 0 (its row is 0).
    The three index tensors live on q's device, int32 (int64 also works, as a separate compiled variant).
    scale: softmax scale. sliding_window: key k visible to query p iff p - window < k <= p (None/0: no window).
    out: optional [T, H, D] destination (last dim contiguous).
    max_query_len, max_context_len: host ints, upper bounds of every q_len and context_len (no device sync needed;
    under CUDA graphs pass fixed maxima). max_query_len == 1 selects the decode kernels, so it must be 1 only when
    every sequence has at most one query; split-K partitions cover exactly max_context_len tokens.
    split_kv: None = automatic (use_split_kv), True/False forces split-K flash decoding / the one-pass kernel.
    partition_size: tokens per split-K program (None = automatic; rounded up to a power of two)."""
    num_tokens, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, kv_dim = k_cache.shape
    num_seqs = context_lens.shape[0]
    assert kv_dim == head_dim and v_cache.shape == k_cache.shape and num_heads % num_kv_heads == 0
    assert query_start_loc.shape[0] == num_seqs + 1 and block_tables.shape[0] >= num_seqs
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.stride(-1) == 1
    if num_tokens == 0 or num_seqs == 0:
        return out
    window = int(sliding_window or 0)
    scale_log2 = float(scale) * _LOG2E
    on_gpu = q.device.type == "cuda" or GPU_TILES_EVERYWHERE
    # Triton's float32 dot runs in TF32 (10-bit mantissa) unless told otherwise: enough to flip greedy tokens
    # against transformers' float32, which the exact path promises; bf16/fp16 inputs are unaffected.
    dot_precision = "ieee" if q.dtype == torch.float32 else "tf32"
    common_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                      v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0))

    if split_kv is None:
        split_kv = use_split_kv(max_query_len, max_context_len)
    if split_kv:
        assert max_query_len == 1, "split-K is for steps whose sequences all have one query"
        split_decode(q, k_cache, v_cache, block_tables, query_start_loc, context_lens, out, scale_log2, window,
                     common_strides, dot_precision, max_context_len, partition_size, on_gpu)
        return out
    _one_pass(q, k_cache, v_cache, out, block_tables, query_start_loc, context_lens, scale_log2, window,
              common_strides, dot_precision, max_query_len, max_context_len, on_gpu)
    return out


def _one_pass(q, k_cache, v_cache, out, block_tables, query_start_loc, context_lens, scale_log2, window,
              common_strides, dot_precision, max_query_len, max_context_len, on_gpu) -> None:
    """paged_attention's one-pass kernel: a program per (query tile, KV head), or per (sequence, KV head) to decode."""
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_seqs, group = context_lens.shape[0], num_heads // num_kv_heads
    is_decode = max_query_len == 1
    if is_decode:
        cfg = _decode_config(num_seqs, num_kv_heads, max_context_len, on_gpu)
        block_m, block_q = pow2_at_least(group, 16), 1
        grid = (num_seqs, num_kv_heads)
    else:
        cfg = _prefill_config(max_query_len, group, on_gpu)
        block_m = max(cfg["BLOCK_M"], pow2_at_least(group, 16))
        block_q = block_m // group
        grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    _paged_attn_kernel[grid](
        q, k_cache, v_cache, out, block_tables, query_start_loc, context_lens,
        scale_log2, window, num_seqs,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), *common_strides,
        HEAD_DIM=head_dim, BLOCK_D=pow2_at_least(head_dim, 16), GROUP=group, BLOCK_Q=block_q, BLOCK_M=block_m,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_SIZE=block_size, SLIDING=window > 0, IS_DECODE=is_decode,
        K_ROWS=cfg.get("K_ROWS", False), DOT_PRECISION=dot_precision, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
