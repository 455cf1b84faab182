"""Split-K (flash-decoding) paged attention for all-decode steps with long contexts, the path paged_attention takes
when use_split_kv says so: each (sequence, KV head, context partition) gets its own program, which writes an
unnormalised partial (acc, max, sum); the last program of a (sequence, KV head) to arrive (an atomic counter each,
reset by that program) merges the partials of its query heads, so the merge costs no launch of its own (at one
sequence a step, that launch was ~3% of a Llama-3.1-8B step). The cache layout and the meaning of the index tensors
are those of paged_attention.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.paged_attention_tile import ArrivalCounters, attend_tile, pow2_at_least, sm_count
from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel

# all-decode steps may switch to split-K once a sequence can span more than this many tokens (see use_split_kv)
SPLIT_MIN_CONTEXT = 256
# When a program per (sequence, KV head) already fills the GPU, each still runs as long as its sequence's context,
# and with contexts of 100-2,000 tokens the longest ran nearly alone at the end of every launch. Cut into pieces of
# at least this many tokens over at most this many partitions, the nano-vllm workload ran 4% faster on an H200
# (pieces of 128 tokens or BLOCK_N 32: 2% slower than one pass).
BALANCE_MIN_PARTITION = 256
BALANCE_MAX_PARTS = 8
# partials merged at a time by the last program of a (sequence, KV head)
MERGE_CHUNK = tl.constexpr(8)


@triton.jit
def _partition_len(ctx, num_parts, MIN_PARTITION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tokens per split-K partition of a sequence of ctx tokens: its context spread over the num_parts programs of
    the grid, at least MIN_PARTITION, a whole number of key tiles. A short context thus runs on a few programs (one
    when ctx <= MIN_PARTITION) whatever the longest context the launch allows for, e.g. inside a CUDA graph."""
    want = tl.maximum((ctx + num_parts - 1) // num_parts, MIN_PARTITION)
    return (want + BLOCK_N - 1) // BLOCK_N * BLOCK_N


@triton.jit(do_not_specialize=["num_parts", "stride_bt"])
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, bt_ptr, qsl_ptr, ctx_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, arrivals_ptr,
    out_ptr, scale_log2, window, num_parts, num_heads,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, MIN_PARTITION: tl.constexpr,
    SLIDING: tl.constexpr, K_ROWS: tl.constexpr = False, DOT_PRECISION: tl.constexpr = "tf32",
    USE_PDL: tl.constexpr = False,
):
    """Sequence x KV head x context partition -> unnormalised partial (acc, max, sum), merged by the last to arrive;
    a sequence whose context fits one partition gets its output written at once."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    ctx = tl.load(ctx_ptr + seq)
    tok = tl.load(qsl_ptr + seq).to(tl.int64)
    partition = _partition_len(ctx, num_parts, MIN_PARTITION, BLOCK_N)
    p_start = part * partition
    no_query = tl.load(qsl_ptr + seq + 1) == tok
    wait_for_previous_kernel(USE_PDL)   # the step's lengths are no kernel's output; q and the cache are
    if (ctx == 0) & (part == 0) & (no_query == 0):   # a query with nothing to attend to (a padding row): zeros
        _store_zeros(out_ptr, tok, kv_head * GROUP, stride_ot, stride_oh, HEAD_DIM, BLOCK_D, GROUP, BLOCK_G)
    if (p_start >= ctx) | no_query:
        return   # no partition past the context is merged; a sequence without a query has nothing
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
        acc, m_i, l_i = attend_tile(q, scale_log2, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, kv_head,
                                    start_n, p_end, q_pos, window,
                                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                    offs_n, offs_d, d_mask, BLOCK_SIZE, False, False, K_ROWS, DOT_PRECISION)

    if ctx <= partition:   # the only partition: normalise and write the output (nothing to merge)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + tok * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_mask[None, :])
    else:
        idx = (tok * num_heads + head) * num_parts + part      # [T, H, num_parts]
        tl.store(part_m_ptr + idx, m_i, mask=row_valid)
        tl.store(part_l_ptr + idx, l_i, mask=row_valid)
        tl.store(part_acc_ptr + idx[:, None] * HEAD_DIM + offs_d[None, :], acc,
                 mask=row_valid[:, None] & d_mask[None, :])
        _arrive(arrivals_ptr + seq * tl.num_programs(1) + kv_head, (ctx + partition - 1) // partition,
                part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, tok, kv_head * GROUP, num_heads, num_parts,
                stride_ot, stride_oh, HEAD_DIM, BLOCK_D, GROUP, BLOCK_G)


@triton.jit
def _arrive(counter_ptr, n_valid, part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, tok, first_head, num_heads,
            num_parts, stride_ot, stride_oh, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
            BLOCK_G: tl.constexpr):
    """Counts this program's partial in; the last of the n_valid partitions of its (sequence, KV head) merges them
    and resets the counter for the next launch."""
    tl.debug_barrier()      # every thread's partial is written before the arrival is counted (acq_rel)
    if tl.atomic_add(counter_ptr, 1) == n_valid - 1:
        _merge_partials(part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, tok, first_head, num_heads, num_parts,
                        n_valid, stride_ot, stride_oh, HEAD_DIM, BLOCK_D, GROUP, BLOCK_G, MERGE_CHUNK)
        tl.atomic_xchg(counter_ptr, 0)


@triton.jit
def _store_zeros(out_ptr, tok, first_head, stride_ot, stride_oh, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 GROUP: tl.constexpr, BLOCK_G: tl.constexpr):
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(out_ptr + tok * stride_ot + (first_head + offs_g)[:, None] * stride_oh + offs_d[None, :],
             tl.zeros([BLOCK_G, BLOCK_D], tl.float32).to(out_ptr.dtype.element_ty),
             mask=(offs_g < GROUP)[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _merge_partials(part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, tok, first_head, num_heads, num_parts, n_valid,
                    stride_ot, stride_oh, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
                    BLOCK_G: tl.constexpr, CHUNK: tl.constexpr):
    """The output of query heads first_head.. (GROUP of them) of token tok from their n_valid partials, CHUNK at a
    time in one pass (maxima, sums and accumulators loaded together: the merge is on the step's critical path, and
    up to CHUNK partitions cost one round of loads), rescaled as the running maximum grows. Loads go through L2
    (.cg): other SMs wrote the partials."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    g_ok = offs_g < GROUP
    d_ok = offs_d < HEAD_DIM
    base = ((tok * num_heads + first_head + offs_g) * num_parts)[:, None]      # [G, 1]
    m_run = tl.full([BLOCK_G], -1.0e30, tl.float32)
    l_run = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for c in range(0, n_valid, CHUNK):
        valid = g_ok[:, None] & (c + offs_c < n_valid)[None, :]
        at = base + c + offs_c[None, :]                                             # [G, CHUNK]
        m = tl.load(part_m_ptr + at, mask=valid, other=-1.0e30, cache_modifier=".cg")
        l = tl.load(part_l_ptr + at, mask=valid, other=0.0, cache_modifier=".cg")
        a = tl.load(part_acc_ptr + at[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                    mask=valid[:, :, None] & d_ok[None, None, :], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_run, tl.max(m, 1))
        w = tl.where(valid, tl.exp2(m - m_new[:, None]), 0.0)
        rescale = tl.exp2(m_run - m_new)
        l_run = l_run * rescale + tl.sum(w * l, 1)
        acc = acc * rescale[:, None] + tl.sum(a * w[:, :, None], 1)
        m_run = m_new
    out = acc / tl.where(l_run > 0, l_run, 1.0)[:, None]
    tl.store(out_ptr + tok * stride_ot + (first_head + offs_g)[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])


# Launch configurations, chosen as paged_attention's (H100 timings, scripts/gpu_kernel_check.py --tune); the CPU
# (interpreter) gets small tiles.

def use_split_kv(max_query_len: int, max_context_len: int) -> bool:
    """The automatic choice of paged_attention(split_kv=None): flash decoding for all-decode steps whose sequences
    may span more than SPLIT_MIN_CONTEXT tokens. At small batches the one-pass grid (a program per sequence and KV
    head) would leave the GPU underused; at large ones the split balances long contexts against short ones."""
    return max_query_len == 1 and max_context_len > SPLIT_MIN_CONTEXT


def _split_config(num_seqs: int, num_kv_heads: int, max_context_len: int, gpu: bool, num_sms: int) -> dict:
    """PARTITION: the partition of the longest context, which sets the grid (cdiv(max_context_len, PARTITION)
    partitions); MIN_PARTITION: the shortest partition a sequence's context is cut into."""
    if not gpu:
        return dict(BLOCK_N=16, PARTITION=64, MIN_PARTITION=16, num_warps=4, num_stages=1)
    if num_seqs * num_kv_heads >= 2 * num_sms:   # the grid is full already: pieces for balance, not for programs
        parts = min(BALANCE_MAX_PARTS, triton.cdiv(max_context_len, BALANCE_MIN_PARTITION))
        return dict(BLOCK_N=64, PARTITION=pow2_at_least(triton.cdiv(max_context_len, parts), 64),
                    MIN_PARTITION=BALANCE_MIN_PARTITION, num_warps=4, num_stages=2, K_ROWS=True)
    # about four programs per SM in all: (sequence, kv head, partition), partitions of 64 tokens at least
    want_parts = triton.cdiv(4 * num_sms, num_seqs * num_kv_heads)
    partition = pow2_at_least(triton.cdiv(max_context_len, want_parts), 64)
    return dict(BLOCK_N=32 if partition in (128, 256) else 64, PARTITION=partition, MIN_PARTITION=64, num_warps=4,
                num_stages=2, K_ROWS=True)


def split_decode(q, k_cache, v_cache, block_tables, query_start_loc, context_lens, out, scale_log2, window,
                 common_strides, dot_precision, max_context_len, partition_size, on_gpu) -> None:
    """paged_attention's split-K (flash-decoding) path: partials per (sequence, KV head, partition), merged by the
    last of each (sequence, KV head)."""
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_seqs = context_lens.shape[0]
    group, block_d = num_heads // num_kv_heads, pow2_at_least(head_dim, 16)
    cfg = _split_config(num_seqs, num_kv_heads, max_context_len, on_gpu, sm_count(q.device))
    if partition_size is not None:
        cfg["PARTITION"] = pow2_at_least(partition_size, cfg["BLOCK_N"])
    # the grid's partitions cover max_context_len; each sequence spreads its own context over them, in pieces
    # of at least min_partition tokens (all of cfg["PARTITION"] when the size is forced)
    num_parts = triton.cdiv(max_context_len, cfg["PARTITION"])
    min_partition = cfg["PARTITION"] if partition_size is not None else cfg["MIN_PARTITION"]
    # one buffer for the partials: acc [T, H, P, D], then max [T, H, P], then sum [T, H, P]
    n = num_tokens * num_heads * num_parts
    partials = torch.empty(n * (head_dim + 2), dtype=torch.float32, device=q.device)
    part_acc, part_m, part_l = partials[:n * head_dim], partials[n * head_dim:n * (head_dim + 1)], \
        partials[n * (head_dim + 1):]
    arrivals = ArrivalCounters.get(q.device, num_seqs * num_kv_heads)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_parts)](
        q, k_cache, v_cache, block_tables, query_start_loc, context_lens, part_acc, part_m, part_l, arrivals, out,
        scale_log2, window, num_parts, num_heads, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        *common_strides,
        HEAD_DIM=head_dim, BLOCK_D=block_d, GROUP=group, BLOCK_G=triton.next_power_of_2(group),
        BLOCK_M=pow2_at_least(group, 16), BLOCK_N=cfg["BLOCK_N"], BLOCK_SIZE=block_size, MIN_PARTITION=min_partition,
        SLIDING=window > 0, K_ROWS=cfg.get("K_ROWS", False), DOT_PRECISION=dot_precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl_options(q.device),
    )
