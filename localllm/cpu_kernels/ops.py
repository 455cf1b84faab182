"""Tensor-level calls of the compiled CPU kernels (build.library()): float32, contiguous, on the CPU. Each takes
the library so that callers decide once whether there is one."""
from __future__ import annotations

import ctypes

import torch

FORMATS = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2}
KV_DTYPES = (torch.float32, torch.float16)   # the KV caches rope_store and decode_attention take
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "lq_dequantize": (ctypes.c_int, _P, _I, _I, _P, ctypes.c_int),
    "lq_matmul": (ctypes.c_int, _P, _I, _I, _P, _I, _I, _P, _I, ctypes.c_int),
    "lq_rms_norm": (_P, _P, _P, _I, _I, _F, _P, _P),
    "lq_silu_mul": (_P, _I, _I, _P),
    "lq_rope_store": (_P, _P, _P, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, ctypes.c_int),
    "lq_decode_attention": (_P, _P, _P, _P, _I, _P, _I, _I, _I, _I, _I, _F, _I, _P, ctypes.c_int, ctypes.c_int),
    "lq_decode_step": (_P, _P, _P, _P, _P, _I, _P, _I, _P, ctypes.c_int),   # layers.cpu_decode fills its model
}


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    for name in ("lq_gemm_available", "lq_kv_half_available"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = (), ctypes.c_int
    return lib


def kv_half(lib) -> bool:
    """Whether rope_store and decode_attention take a float16 KV cache (built with F16C)."""
    return bool(lib.lq_kv_half_available())


def tiled_gemm(lib) -> bool:
    """Whether matmul multiplies a prefill-sized x by quant_gemm.c's tiles (built with AVX2), faster than torch's
    GEMM over the dequantized weights; without them it is only fit for a few rows of x."""
    return bool(lib.lq_gemm_available())


def dequantize(lib, blocks: torch.Tensor, fmt: str, cols: int) -> torch.Tensor:
    """uint8 block rows [rows, row bytes] -> float32 [rows, cols], the values of quant_blocks_ref.dequantize_ref."""
    out = torch.empty(blocks.shape[0], cols)
    lib.lq_dequantize(FORMATS[fmt], blocks.data_ptr(), blocks.shape[0], cols, out.data_ptr(),
                      torch.get_num_threads())
    return out


def matmul(lib, x: torch.Tensor, blocks: torch.Tensor, fmt: str, out: torch.Tensor) -> torch.Tensor:
    """out [m, rows] (rows may be a column slice of a wider, row-contiguous tensor) = x [m, cols] @ W^T, x rounded
    to int16 per 32 values."""
    m, cols = x.shape
    lib.lq_matmul(FORMATS[fmt], blocks.data_ptr(), blocks.shape[0], cols, x.data_ptr(), m, x.stride(0),
                  out.data_ptr(), out.stride(0), torch.get_num_threads())
    return out


def rms_norm(lib, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """rmsnorm_ref.rms_norm_ref's results: normed, or (normed, x + residual)."""
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if residual is not None else None
    lib.lq_rms_norm(x.data_ptr(), None if residual is None else residual.data_ptr(), weight.data_ptr(),
                    x.numel() // x.shape[-1], x.shape[-1], eps, out.data_ptr(),
                    None if summed is None else summed.data_ptr())
    return out if summed is None else (out, summed)


def silu_mul(lib, x: torch.Tensor) -> torch.Tensor:
    inner = x.shape[-1] // 2
    out = torch.empty(*x.shape[:-1], inner)
    lib.lq_silu_mul(x.data_ptr(), x.numel() // x.shape[-1], inner, out.data_ptr())
    return out


def rope_store(lib, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """q [T, H, D], k and v [T, Hkv, D] (row views of one qkv projection, sharing their row stride): q rotated into
    a new tensor, k rotated and v written into their cache slots (the plain-torch rotate_ref + store_kvcache), a
    float32 or a float16 cache (rounded to nearest, as .half() rounds)."""
    tokens, heads, dim = q.shape
    out = torch.empty(tokens, heads, dim)
    lib.lq_rope_store(q.data_ptr(), k.data_ptr(), v.data_ptr(), q.stride(0), tokens, heads, k.shape[1], dim,
                      cos.data_ptr(), sin.data_ptr(), slots.data_ptr(), out.data_ptr(), k_cache.data_ptr(),
                      v_cache.data_ptr(), k_cache.dtype == torch.float16)
    return out


def decode_attention(lib, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, window: int | None) -> torch.Tensor:
    """paged_attention_ref.decode_attention's result, q [B, H, D] float32 over float32 or float16 caches; tables and
    lengths int64."""
    seqs, heads, dim = q.shape
    out = torch.empty_like(q)
    lib.lq_decode_attention(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(),
                            block_tables.stride(0), context_lens.data_ptr(), seqs, heads, k_cache.shape[2], dim,
                            k_cache.shape[1], scale, window or 0, out.data_ptr(), k_cache.dtype == torch.float16,
                            torch.get_num_threads())
    return out
