"""Triton neox-style (rotate-half) rotary embedding for q [T, Hq, D] and k [T, Hkv, D], from cos/sin caches
[max_pos, D] (as built by localllm/layers/rotary.py, scaling already baked in) indexed by positions [T].
out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]); computed in fp32.
Its plain-torch reference (and the CPU path) is rotary_ref.rotary_ref."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(x_ptr, o_ptr, row, stride_xt, stride_xh, stride_ot, stride_oh, n_heads, cos1, sin1, cos2, sin2,
            offs_h, offs_d, HALF: tl.constexpr):
    mask = (offs_h < n_heads)[:, None] & (offs_d < HALF)[None, :]
    base = x_ptr + row * stride_xt + offs_h[:, None] * stride_xh + offs_d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos1[None, :] - x2 * sin1[None, :]
    o2 = x2 * cos2[None, :] + x1 * sin2[None, :]
    obase = o_ptr + row * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :]
    tl.store(obase, o1.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(obase + HALF, o2.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(pos_ptr, q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_qot, stride_qoh, stride_kot, stride_koh,
                   stride_cos, stride_sin, n_q_heads, n_k_heads,
                   HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + row).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    dm = offs_d < HALF
    cos1 = tl.load(cos_ptr + pos * stride_cos + offs_d, mask=dm, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + pos * stride_cos + HALF + offs_d, mask=dm, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + pos * stride_sin + offs_d, mask=dm, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + pos * stride_sin + HALF + offs_d, mask=dm, other=0.0).to(tl.float32)
    _rotate(q_ptr, qo_ptr, row, stride_qt, stride_qh, stride_qot, stride_qoh, n_q_heads, cos1, sin1, cos2, sin2,
            tl.arange(0, BLOCK_HQ), offs_d, HALF)
    _rotate(k_ptr, ko_ptr, row, stride_kt, stride_kh, stride_kot, stride_koh, n_k_heads, cos1, sin1, cos2, sin2,
            tl.arange(0, BLOCK_HK), offs_d, HALF)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_cache: torch.Tensor,
                     sin_cache: torch.Tensor, *, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T] (int32/int64), q [T, Hq, D], k [T, Hkv, D] (last dim contiguous, token/head strides free, e.g.
    views of a fused qkv output), cos_cache/sin_cache [max_pos, D] (fp32 or the model dtype). Returns (q_rot, k_rot):
    new tensors, or q and k themselves rotated in place when inplace=True."""
    num_tokens, n_q_heads, head_dim = q.shape
    assert k.shape[0] == num_tokens and k.shape[2] == head_dim and head_dim % 2 == 0
    assert cos_cache.shape[-1] == head_dim and sin_cache.shape == cos_cache.shape
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and cos_cache.stride(-1) == 1 and sin_cache.stride(-1) == 1
    if inplace:
        q_out, k_out = q, k
    else:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens:
        half = head_dim // 2
        n_k_heads = k.shape[1]
        _rotary_kernel[(num_tokens,)](
            positions, q, k, q_out, k_out, cos_cache, sin_cache,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
            cos_cache.stride(0), sin_cache.stride(0), n_q_heads, n_k_heads,
            HALF=half, BLOCK_HALF=triton.next_power_of_2(half), BLOCK_HQ=triton.next_power_of_2(n_q_heads),
            BLOCK_HK=triton.next_power_of_2(n_k_heads), num_warps=4 if n_q_heads * head_dim >= 2048 else 1,
        )
    return q_out, k_out
