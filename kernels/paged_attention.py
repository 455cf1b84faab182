"""Triton paged attention over the KV cache: one varlen launch for a whole step (decodes, prefills, chunked
prefills after a cached prefix), plus a split-K (flash-decoding) path for all-decode steps with long contexts.

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

import functools

import torch
import triton
import triton.language as tl

from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel

_LOG2E = 1.4426950408889634

# all-decode steps may switch to split-K once a sequence can span more than this many tokens (see use_split_kv)
SPLIT_MIN_CONTEXT = 256
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


@triton.jit
def _attend_tile(q, scale_log2, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head, start_n, kv_end,
                 q_pos, window, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                 offs_n, offs_d, d_mask,
                 BLOCK_SIZE: tl.constexpr, SLIDING: tl.constexpr, CAUSAL: tl.constexpr, K_ROWS: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """One BLOCK_N slice of keys [start_n, start_n + BLOCK_N) against the query rows; online-softmax update."""
    k_pos = start_n + offs_n
    k_valid = k_pos < kv_end
    blk = tl.load(bt_row_ptr + k_pos // BLOCK_SIZE, mask=k_valid, other=0).to(tl.int64)
    in_blk = (k_pos % BLOCK_SIZE).to(tl.int64)
    k_off = blk * stride_kb + in_blk * stride_ks + kv_head * stride_kh
    v_off = blk * stride_vb + in_blk * stride_vs + kv_head * stride_vh
    if K_ROWS:   # load K as [BLOCK_N, BLOCK_D] rows and transpose in registers
        kt = tl.trans(tl.load(k_cache_ptr + k_off[:, None] + offs_d[None, :],
                              mask=k_valid[:, None] & d_mask[None, :], other=0.0))
    else:
        kt = tl.load(k_cache_ptr + k_off[None, :] + offs_d[:, None], mask=k_valid[None, :] & d_mask[:, None],
                     other=0.0)
    qk = tl.dot(q, kt, input_precision=DOT_PRECISION) * scale_log2                     # [BLOCK_M, BLOCK_N] fp32, log2 units
    visible = k_valid[None, :]
    if CAUSAL:
        visible = visible & (k_pos[None, :] <= q_pos[:, None])
    if SLIDING:
        visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
    qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_cache_ptr + v_off[:, None] + offs_d[None, :], mask=k_valid[:, None] & d_mask[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


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
        acc, m_i, l_i = _attend_tile(q, scale_log2, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, kv_head,
                                     start_n, kv_end, q_pos, window,
                                     stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                     offs_n, offs_d, d_mask, BLOCK_SIZE, SLIDING, False, K_ROWS, DOT_PRECISION)
    for start_n in range(diag_start, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(q, scale_log2, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, kv_head,
                                     start_n, kv_end, q_pos, window,
                                     stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                     offs_n, offs_d, d_mask, BLOCK_SIZE, SLIDING, True, K_ROWS, DOT_PRECISION)

    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + row[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_mask[None, :])


@triton.jit
def _partition_len(ctx, num_parts, MIN_PARTITION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tokens per split-K partition of a sequence of ctx tokens: its context spread over the num_parts programs of
    the grid, at least MIN_PARTITION, a whole number of key tiles. A short context thus runs on a few programs (one
    when ctx <= MIN_PARTITION) whatever the longest context the launch allows for, e.g. inside a CUDA graph."""
    want = tl.maximum((ctx + num_parts - 1) // num_parts, MIN_PARTITION)
    return (want + BLOCK_N - 1) // BLOCK_N * BLOCK_N


@triton.jit(do_not_specialize=["num_parts", "stride_bt"])
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, bt_ptr, qsl_ptr, ctx_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr,
    scale_log2, window, num_parts, num_heads,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, MIN_PARTITION: tl.constexpr,
    SLIDING: tl.constexpr, K_ROWS: tl.constexpr = False, DOT_PRECISION: tl.constexpr = "tf32",
    USE_PDL: tl.constexpr = False,
):
    """Flash-decoding phase 1: sequence x KV head x context partition -> unnormalised partial (acc, max, sum); a
    sequence whose context fits one partition gets its output written here, and the reduction skips it."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    ctx = tl.load(ctx_ptr + seq)
    tok = tl.load(qsl_ptr + seq).to(tl.int64)
    partition = _partition_len(ctx, num_parts, MIN_PARTITION, BLOCK_N)
    p_start = part * partition
    wait_for_previous_kernel(USE_PDL)   # the step's lengths are no kernel's output; q and the cache are
    if (p_start >= ctx) | (tl.load(qsl_ptr + seq + 1) == tok):
        return   # the reduction never reads partitions past the context; a sequence without a query has nothing
    p_end = tl.minimum(p_start + partition, ctx)
    if SLIDING:
        p_start = tl.maximum(p_start, ctx - window)   # the one query is at ctx - 1

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_valid = offs_m < GROUP
    head = kv_head * GROUP + offs_m
    q = tl.load(q_ptr + tok * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_valid[:, None] & d_mask[None, :], other=0.0)
    q_pos = tl.zeros([BLOCK_M], tl.int32) + (ctx - 1)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
    for start_n in range(p_start, p_end, BLOCK_N):
        # keys in [p_start, p_end) are all <= ctx - 1 and inside the window: only the range mask matters
        acc, m_i, l_i = _attend_tile(q, scale_log2, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, kv_head,
                                     start_n, p_end, q_pos, window,
                                     stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                     offs_n, offs_d, d_mask, BLOCK_SIZE, False, False, K_ROWS, DOT_PRECISION)

    if ctx <= partition:   # the only partition: normalise and write the output (the reduction skips it)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + tok * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_mask[None, :])
    else:
        idx = (tok * num_heads + head) * num_parts + part      # [T, H, num_parts]
        tl.store(part_m_ptr + idx, m_i, mask=row_valid)
        tl.store(part_l_ptr + idx, l_i, mask=row_valid)
        tl.store(part_acc_ptr + idx[:, None] * HEAD_DIM + offs_d[None, :], acc,
                 mask=row_valid[:, None] & d_mask[None, :])


@triton.jit(do_not_specialize=["num_parts"])
def _decode_reduce_kernel(
    part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, qsl_ptr, ctx_ptr,
    num_parts, num_heads, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MIN_PARTITION: tl.constexpr, BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    """Flash-decoding phase 2: merge the partitions of one (sequence, query head). A context of one partition was
    written by phase 1; an empty one (a padding row) gets zeros."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    ctx = tl.load(ctx_ptr + seq)
    tok = tl.load(qsl_ptr + seq).to(tl.int64)
    partition = _partition_len(ctx, num_parts, MIN_PARTITION, BLOCK_N)
    n_valid = tl.minimum((ctx + partition - 1) // partition, num_parts)
    wait_for_previous_kernel(USE_PDL)
    if (tl.load(qsl_ptr + seq + 1) == tok) | (n_valid == 1):
        return   # no query row for this sequence, or phase 1 wrote it
    base = (tok * num_heads + head) * num_parts
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM

    m_run = tl.full([CHUNK], -1.0e30, tl.float32)
    for c in range(0, n_valid, CHUNK):
        m = tl.load(part_m_ptr + base + c + offs_c, mask=c + offs_c < n_valid, other=-1.0e30)
        m_run = tl.maximum(m_run, m)
    m_all = tl.max(m_run, 0)

    l_run = tl.zeros([CHUNK], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for c in range(0, n_valid, CHUNK):
        valid = c + offs_c < n_valid
        m = tl.load(part_m_ptr + base + c + offs_c, mask=valid, other=-1.0e30)
        l = tl.load(part_l_ptr + base + c + offs_c, mask=valid, other=0.0)
        w = tl.where(valid, tl.exp2(m - m_all), 0.0)
        l_run += w * l
        a = tl.load(part_acc_ptr + (base + c + offs_c)[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=valid[:, None] & d_mask[None, :], other=0.0)
        acc += tl.sum(a * w[:, None], 0)
    l_all = tl.sum(l_run, 0)
    out = acc / tl.where(l_all > 0, l_all, 1.0)
    tl.store(out_ptr + tok * stride_ot + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    return 8   # interpreter on the CPU: any number works


def _pow2_at_least(n: int, floor: int) -> int:
    return max(floor, triton.next_power_of_2(max(1, n)))


# Launch configurations, chosen from timings on an H100 (torch 2.11, triton 3.6; Llama-3.1-8B geometry, bf16,
# block size 16, CUDA-graph replays; see scripts/gpu_kernel_check.py --tune). The CPU (interpreter) gets small tiles.

def use_split_kv(max_query_len: int, max_context_len: int, num_seqs: int, num_kv_heads: int,
                 num_sms: int = 132) -> bool:
    """The automatic choice of paged_attention(split_kv=None): flash decoding for all-decode steps over long contexts
    whose one-pass grid (a program per sequence and KV head) would leave the GPU underused. From 64 x 8 programs on,
    the one-pass kernel already streams K/V at about the memory roofline and a split would only add the merge."""
    return max_query_len == 1 and max_context_len > SPLIT_MIN_CONTEXT and num_seqs * num_kv_heads < 2 * num_sms


def _split_config(num_seqs: int, num_kv_heads: int, max_context_len: int, gpu: bool, num_sms: int) -> dict:
    """PARTITION: the partition of the longest context, which sets the grid (cdiv(max_context_len, PARTITION)
    partitions); MIN_PARTITION: the shortest partition a sequence's context is cut into."""
    if not gpu:
        return dict(BLOCK_N=16, PARTITION=64, MIN_PARTITION=16, num_warps=4, num_stages=1)
    # about four programs per SM in all: (sequence, kv head, partition), partitions of 64 tokens at least
    want_parts = triton.cdiv(4 * num_sms, num_seqs * num_kv_heads)
    partition = _pow2_at_least(triton.cdiv(max_context_len, want_parts), 64)
    return dict(BLOCK_N=32 if partition in (128, 256) else 64, PARTITION=partition, MIN_PARTITION=64, num_warps=4,
                num_stages=2, K_ROWS=True)


def _decode_config(num_seqs: int, num_kv_heads: int, max_context_len: int, gpu: bool) -> dict:
    if not gpu:
        return dict(BLOCK_N=16, num_warps=4, num_stages=1)
    return dict(BLOCK_N=32 if max_context_len <= 1024 else 128, num_warps=4, num_stages=3, K_ROWS=True)


def _prefill_config(max_query_len: int, group: int, gpu: bool) -> dict:
    """BLOCK_M: query rows (tokens x group heads) per program; K_ROWS: load K tiles row-major and transpose them in
    registers (faster on the H100 than loading them transposed)."""
    if not gpu:
        return dict(BLOCK_M=min(32, _pow2_at_least(max_query_len * group, 16)), BLOCK_N=16, num_warps=4,
                    num_stages=1)
    # One tile shape whatever the step's query lengths: each shape is a separate compile (seconds), and a short
    # prompt wastes little in a 64-row tile, as it is bound by reading K/V, not by the rows it computes.
    return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, K_ROWS=True)


def _split_decode(q, k_cache, v_cache, block_tables, query_start_loc, context_lens, out, scale_log2, window,
                  common_strides, dot_precision, max_context_len, partition_size, on_gpu) -> None:
    """paged_attention's split-K (flash-decoding) path: partials per (sequence, KV head, partition), then merged."""
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_seqs = context_lens.shape[0]
    group, block_d = num_heads // num_kv_heads, _pow2_at_least(head_dim, 16)
    cfg = _split_config(num_seqs, num_kv_heads, max_context_len, on_gpu, _sm_count(q.device))
    if partition_size is not None:
        cfg["PARTITION"] = _pow2_at_least(partition_size, cfg["BLOCK_N"])
    # the grid's partitions cover max_context_len; each sequence spreads its own context over them, in pieces
    # of at least min_partition tokens (all of cfg["PARTITION"] when the size is forced)
    num_parts = triton.cdiv(max_context_len, cfg["PARTITION"])
    min_partition = cfg["PARTITION"] if partition_size is not None else cfg["MIN_PARTITION"]
    # one buffer for the partials: acc [T, H, P, D], then max [T, H, P], then sum [T, H, P]
    n = num_tokens * num_heads * num_parts
    partials = torch.empty(n * (head_dim + 2), dtype=torch.float32, device=q.device)
    part_acc, part_m, part_l = partials[:n * head_dim], partials[n * head_dim:n * (head_dim + 1)], \
        partials[n * (head_dim + 1):]
    _decode_split_kernel[(num_seqs, num_kv_heads, num_parts)](
        q, k_cache, v_cache, block_tables, query_start_loc, context_lens, part_acc, part_m, part_l, out,
        scale_log2, window, num_parts, num_heads, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        *common_strides,
        HEAD_DIM=head_dim, BLOCK_D=block_d, GROUP=group, BLOCK_M=_pow2_at_least(group, 16),
        BLOCK_N=cfg["BLOCK_N"], BLOCK_SIZE=block_size, MIN_PARTITION=min_partition, SLIDING=window > 0,
        K_ROWS=cfg.get("K_ROWS", False), DOT_PRECISION=dot_precision, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **pdl_options(q.device),
    )
    _decode_reduce_kernel[(num_seqs, num_heads)](
        part_acc, part_m, part_l, out, query_start_loc, context_lens, num_parts, num_heads,
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, MIN_PARTITION=min_partition, BLOCK_N=cfg["BLOCK_N"], CHUNK=16,
        num_warps=1 if head_dim <= 64 else 2, **pdl_options(q.device),
    )


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    query_start_loc: torch.Tensor, context_lens: torch.Tensor, scale: float,
                    sliding_window: int | None = None, out: torch.Tensor | None = None, *,
                    max_query_len: int, max_context_len: int,
                    split_kv: bool | None = None, partition_size: int | None = None) -> torch.Tensor:
    """Causal paged attention for a whole step; returns out.

    q [T, H, D] (last dim contiguous; token/head strides are free, e.g. a view of a fused qkv output).
    k_cache, v_cache [num_blocks, block_size, Hkv, D] (last dim contiguous), already holding this step's K/V.
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
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.stride(-1) == 1
    if num_tokens == 0 or num_seqs == 0:
        return out
    window = int(sliding_window or 0)
    scale_log2 = float(scale) * _LOG2E
    block_d = _pow2_at_least(head_dim, 16)
    on_gpu = q.device.type == "cuda" or GPU_TILES_EVERYWHERE
    # Triton's float32 dot runs in TF32 (10-bit mantissa) unless told otherwise: enough to flip greedy tokens
    # against transformers' float32, which the exact path promises; bf16/fp16 inputs are unaffected.
    dot_precision = "ieee" if q.dtype == torch.float32 else "tf32"
    common_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                      v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0))

    is_decode = max_query_len == 1
    if split_kv is None:
        split_kv = use_split_kv(max_query_len, max_context_len, num_seqs, num_kv_heads, _sm_count(q.device))
    if split_kv:
        assert is_decode, "split-K is for steps whose sequences all have one query"
        _split_decode(q, k_cache, v_cache, block_tables, query_start_loc, context_lens, out, scale_log2, window,
                      common_strides, dot_precision, max_context_len, partition_size, on_gpu)
        return out

    if is_decode:
        cfg = _decode_config(num_seqs, num_kv_heads, max_context_len, on_gpu)
        block_m, block_q = _pow2_at_least(group, 16), 1
        grid = (num_seqs, num_kv_heads)
    else:
        cfg = _prefill_config(max_query_len, group, on_gpu)
        block_m = max(cfg["BLOCK_M"], _pow2_at_least(group, 16))
        block_q = block_m // group
        grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    _paged_attn_kernel[grid](
        q, k_cache, v_cache, out, block_tables, query_start_loc, context_lens,
        scale_log2, window, num_seqs,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), *common_strides,
        HEAD_DIM=head_dim, BLOCK_D=block_d, GROUP=group, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_SIZE=block_size, SLIDING=window > 0, IS_DECODE=is_decode, K_ROWS=cfg.get("K_ROWS", False),
        DOT_PRECISION=dot_precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out
