"""Triton: a step's q/k RMSNorm per head (Qwen3, optional), neox rotary embedding and K/V-cache store in one launch
per layer, in place of three to five (norm q, norm k, rotary, store). It reads q, k and v once (views of the fused
qkv projection), writes the rotated q back in place and the rotated k and v into their cache slots; the rotated k is
not written anywhere else, since attention reads K from the cache. Same arithmetic as the unfused kernels: the norm
in fp32, rounded to the input dtype, times the weight and rounded again (as rms_norm), then rotated in fp32,
rounded where transformers' rotary rounds (kernels/rounding.py).
Its plain-torch reference is rope_store_ref.norm_rope_store_ref.

An fp8 cache (torch.float8_e4m3fn, scale 1) gets each value rounded to the input dtype, then to e4m3: round to
nearest even, saturating at +-448 (what torch's .to(float8_e4m3fn) gives after a clamp to +-448; torch itself
turns values of 480 and more into NaN). On a GPU by its conversion instruction; under Triton's interpreter, whose
conversion to fp8 truncates and wraps, bit by bit (rounding.e4m3_bits)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel
from localllm.kernels.rounding import rounded, to_e4m3


@triton.jit
def _cache_values(x, in_dtype, cache_dtype, KV_FP8: tl.constexpr, FP8_HW: tl.constexpr):
    """float32 x as the cache holds it: in cache_dtype, or for an fp8 cache rounded to in_dtype (the reference
    stores a tensor of that dtype) and then to e4m3 (by the GPU's conversion when FP8_HW)."""
    if KV_FP8:
        x = rounded(x, in_dtype)
        values = to_e4m3(x, FP8_HW)
    else:
        values = rounded(x, cache_dtype).to(cache_dtype)   # exact: the interpreter's truncation changes nothing
    return values


@triton.jit
def _rotate_heads(src, stride_sh, dst, stride_dh, n_heads, w_ptr, eps, cos1, sin1, cos2, sin2,
                  HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr, HAS_NORM: tl.constexpr,
                  KV_FP8: tl.constexpr = False, FP8_HW: tl.constexpr = False):
    """Heads [n_heads, 2 * HALF] at src (head stride stride_sh): RMS-normed per head and scaled when HAS_NORM (rounded
    to the input dtype twice, as rms_norm does), rotated as rotary_ref rounds it, written at dst (head stride
    stride_dh) as _cache_values makes them (KV_FP8: dst is an fp8 cache)."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    dm = offs_d < HALF
    mask = (offs_h < n_heads)[:, None] & dm[None, :]
    at = src + offs_h[:, None] * stride_sh + offs_d[None, :]
    x1 = tl.load(at, mask=mask, other=0.0)
    x2 = tl.load(at + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    if HAS_NORM:
        inv = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF) + eps)
        w1 = tl.load(w_ptr + offs_d, mask=dm, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + HALF + offs_d, mask=dm, other=0.0).to(tl.float32)
        x1 = rounded(rounded(x1 * inv[:, None], dtype) * w1[None, :], dtype)
        x2 = rounded(rounded(x2 * inv[:, None], dtype) * w2[None, :], dtype)
    out = dst + offs_h[:, None] * stride_dh + offs_d[None, :]
    out_ty = dst.dtype.element_ty
    first = rounded(x1 * rounded(cos1, dtype)[None, :], dtype) - rounded(x2 * rounded(sin1, dtype)[None, :], dtype)
    second = rounded(x2 * rounded(cos2, dtype)[None, :], dtype) + rounded(x1 * rounded(sin2, dtype)[None, :], dtype)
    tl.store(out, _cache_values(first, dtype, out_ty, KV_FP8, FP8_HW), mask=mask)
    tl.store(out + HALF, _cache_values(second, dtype, out_ty, KV_FP8, FP8_HW), mask=mask)


@triton.jit
def _rope_store_kernel(pos_ptr, slot_ptr, q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, k_cache_ptr,
                       v_cache_ptr, eps, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                       stride_cos, stride_sin, stride_cb, stride_cs, stride_ch, n_q_heads, n_kv_heads,
                       HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr,
                       BLOCK_HKV: tl.constexpr, BLOCK_SIZE: tl.constexpr, HAS_NORM: tl.constexpr,
                       USE_PDL: tl.constexpr, KV_FP8: tl.constexpr = False, FP8_HW: tl.constexpr = False):
    """Program (t, 0) rotates token t's query heads in place; program (t, 1) stores its key and value heads."""
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    dm = offs_d < HALF
    cos1 = tl.load(cos_ptr + pos * stride_cos + offs_d, mask=dm, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + pos * stride_cos + HALF + offs_d, mask=dm, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + pos * stride_sin + offs_d, mask=dm, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + pos * stride_sin + HALF + offs_d, mask=dm, other=0.0).to(tl.float32)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    wait_for_previous_kernel(USE_PDL)   # the positions, slots and rotary tables are no kernel's output; q/k/v are
    if tl.program_id(1) == 0:
        q_row = q_ptr + t * stride_qt
        _rotate_heads(q_row, stride_qh, q_row, stride_qh, n_q_heads, qw_ptr, eps, cos1, sin1, cos2, sin2,
                      HALF, BLOCK_HALF, BLOCK_HQ, HAS_NORM)
    elif slot >= 0:   # a negative slot is a padding row of a CUDA-graph batch: nothing to store
        cache_row = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
        _rotate_heads(k_ptr + t * stride_kt, stride_kh, k_cache_ptr + cache_row, stride_ch, n_kv_heads, kw_ptr,
                      eps, cos1, sin1, cos2, sin2, HALF, BLOCK_HALF, BLOCK_HKV, HAS_NORM, KV_FP8, FP8_HW)
        offs_h = tl.arange(0, BLOCK_HKV)
        mask = (offs_h < n_kv_heads)[:, None] & dm[None, :]
        v_src = v_ptr + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :]
        v_dst = v_cache_ptr + cache_row + offs_h[:, None] * stride_ch + offs_d[None, :]
        v_ty = v_cache_ptr.dtype.element_ty
        for half in tl.static_range(2):
            x = tl.load(v_src + half * HALF, mask=mask)
            tl.store(v_dst + half * HALF, _cache_values(x.to(tl.float32), x.dtype, v_ty, KV_FP8, FP8_HW),
                     mask=mask)


def norm_rope_store(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    cos_cache: torch.Tensor, sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor, q_norm_weight: torch.Tensor | None = None,
                    k_norm_weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """positions, slot_mapping [T] (int32/int64; a negative slot stores nothing); q [T, Hq, D], k, v [T, Hkv, D]
    (last dim contiguous, token/head strides free: views of a fused qkv output); cos_cache/sin_cache [max_pos, D];
    k_cache, v_cache [num_blocks, block_size, Hkv, D] with the same strides, of any float dtype or float8_e4m3fn (an
    fp8 cache, see above); q_norm_weight, k_norm_weight [D]: the
    per-head RMSNorm weights (both or neither). Rotates q in place and returns it."""
    num_tokens, n_q_heads, head_dim = q.shape
    n_kv_heads = k.shape[1]
    assert k.shape == v.shape == (num_tokens, n_kv_heads, head_dim) and head_dim % 2 == 0
    assert cos_cache.shape[-1] == head_dim and sin_cache.shape == cos_cache.shape
    assert k_cache.shape[2:] == (n_kv_heads, head_dim) and v_cache.shape == k_cache.shape
    assert v_cache.stride() == k_cache.stride() and slot_mapping.shape[0] == num_tokens
    assert (q_norm_weight is None) == (k_norm_weight is None)
    for x in (q, k, v, cos_cache, sin_cache, k_cache):
        assert x.stride(-1) == 1
    if num_tokens == 0:
        return q
    half = head_dim // 2
    has_norm = q_norm_weight is not None
    _rope_store_kernel[(num_tokens, 2)](
        positions, slot_mapping, q, k, v, cos_cache, sin_cache, q_norm_weight if has_norm else q,
        k_norm_weight if has_norm else q, k_cache, v_cache, float(eps),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos_cache.stride(0), sin_cache.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        n_q_heads, n_kv_heads,
        HALF=half, BLOCK_HALF=triton.next_power_of_2(half), BLOCK_HQ=triton.next_power_of_2(n_q_heads),
        BLOCK_HKV=triton.next_power_of_2(n_kv_heads), BLOCK_SIZE=k_cache.shape[1], HAS_NORM=has_norm,
        KV_FP8=k_cache.dtype == torch.float8_e4m3fn, FP8_HW=k_cache.is_cuda,
        num_warps=4 if n_q_heads * head_dim >= 2048 else 1, **pdl_options(q.device),
    )
    return q
