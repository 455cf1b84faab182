"""What both paged-attention paths (paged_attention's one-pass kernel, paged_attention_split's split-K decode) share:
the online-softmax step over one tile of keys read through the block table, and the host helpers that size their
launches."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _decoded(x, dtype):
    """Cache values in the dtype attention computes in: a no-op for a cache in that dtype; an fp8 (e4m3, scale 1)
    cache decoded exactly through float32 (Triton's interpreter turns e4m3 into bfloat16 wrongly, into float32
    right)."""
    if x.dtype.is_fp8():
        x = x.to(tl.float32)
    return x.to(dtype)


@triton.jit
def attend_tile(q, scale_log2, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head, start_n, kv_end,
                q_pos, window, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                offs_n, offs_d, d_mask,
                BLOCK_SIZE: tl.constexpr, SLIDING: tl.constexpr, CAUSAL: tl.constexpr, K_ROWS: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """One BLOCK_N slice of keys [start_n, start_n + BLOCK_N) against the query rows; online-softmax update. K and
    V tiles are _decoded to q's dtype as they are loaded."""
    k_pos = start_n + offs_n
    k_valid = k_pos < kv_end
    blk = tl.load(bt_row_ptr + k_pos // BLOCK_SIZE, mask=k_valid, other=0).to(tl.int64)
    in_blk = (k_pos % BLOCK_SIZE).to(tl.int64)
    k_off = blk * stride_kb + in_blk * stride_ks + kv_head * stride_kh
    v_off = blk * stride_vb + in_blk * stride_vs + kv_head * stride_vh
    if K_ROWS:   # load K as [BLOCK_N, BLOCK_D] rows and transpose in registers
        kt = tl.trans(_decoded(tl.load(k_cache_ptr + k_off[:, None] + offs_d[None, :],
                              mask=k_valid[:, None] & d_mask[None, :], other=0.0), q.dtype))
    else:
        kt = _decoded(tl.load(k_cache_ptr + k_off[None, :] + offs_d[:, None],
                              mask=k_valid[None, :] & d_mask[:, None], other=0.0), q.dtype)
    qk = tl.dot(q, kt, input_precision=DOT_PRECISION) * scale_log2    # [BLOCK_M, BLOCK_N] fp32, log2 units
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
    v = _decoded(tl.load(v_cache_ptr + v_off[:, None] + offs_d[None, :], mask=k_valid[:, None] & d_mask[None, :],
                         other=0.0), q.dtype)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    return 8   # interpreter on the CPU: any number works


def pow2_at_least(n: int, floor: int) -> int:
    return max(floor, triton.next_power_of_2(max(1, n)))


class ArrivalCounters:
    """Per device: int32 counters, zero between launches (the kernel that counts on one resets it), for the split-K
    programs of each (sequence, KV head) to find the last of them. Grown, never shrunk or freed: a CUDA graph
    captured with a smaller buffer still uses it when it replays."""
    buffers: dict = {}
    retired: list = []

    @classmethod
    def get(cls, device: torch.device, count: int) -> torch.Tensor:
        counters = cls.buffers.get(device)
        if counters is None or counters.numel() < count:
            if counters is not None:
                cls.retired.append(counters)
            counters = cls.buffers[device] = torch.zeros(max(count, 4096), dtype=torch.int32, device=device)
        return counters
