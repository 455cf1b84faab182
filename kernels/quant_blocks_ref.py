"""Quantized weight blocks in plain torch: their dequantizers (the ground truth of quant_matmul's Triton kernels
and the CPU path of localllm.layers), and quant_matmul_ref (dequantize, then matmul).

A quantized [N, K] weight is kept as uint8 [N, K / elems * nbytes] (block_formats.py), its blocks laid out as
llama.cpp's ggml-common.h defines them (the GGUF formats) or as localllm repacks AWQ/GPTQ checkpoints (int4_g128).
Row r of the matrix is output feature r.

The dequantizers reproduce `gguf.quants.dequantize` bit for bit: the same float32 operations in the same order
(a product of float32 values rounds the same way in numpy and torch, on any device). They work on any device,
without a host copy, so that an embedding lookup through them can be captured in a CUDA graph.
"""
from __future__ import annotations

import torch

from localllm.kernels.block_formats import QK_K, block_format


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The float16 at byte `offset` of each block, as float32 [n, 1]."""
    return blocks[:, offset:offset + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, B] bytes -> [n, 2, B]: the low nibbles of all B bytes, then the high ones."""
    return torch.stack((qs & 0x0F, qs >> 4), dim=1)


def _q4_0(blocks):
    q = _nibbles(blocks[:, 2:]).reshape(len(blocks), -1).to(torch.int8) - 8
    return _f16(blocks, 0) * q.float()


def _q4_1(blocks):
    q = _nibbles(blocks[:, 4:]).reshape(len(blocks), -1).float()
    return _f16(blocks, 0) * q + _f16(blocks, 2)


def _q8_0(blocks):
    return blocks[:, 2:].contiguous().view(torch.int8).float() * _f16(blocks, 0)


def k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins of Q4_K/Q5_K blocks from their 12 packed bytes [n, 12] -> 2 x [n, 8].
    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top bits of scales 4-7; bytes 4-7 mins 0-3 and the top bits of
    mins 4-7; bytes 8-11 the low nibbles of scales 4-7 (low) and mins 4-7 (high)."""
    d, m, m_d = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat((d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)), dim=1)
    mn = torch.cat((m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)), dim=1)
    return sc, mn


def _k_quant(blocks, q: torch.Tensor):
    """Q4_K/Q5_K: w = (d * scale) * q - dmin * min, per 32-weight sub-block; q is [n, 8, 32]."""
    n = len(blocks)
    sc, mn = k_scales_mins(blocks[:, 4:16])
    d = (_f16(blocks, 0) * sc.float()).reshape(n, 8, 1)
    dm = (_f16(blocks, 2) * mn.float()).reshape(n, 8, 1)
    return (d * q.float() - dm).reshape(n, QK_K)


def _q4_k(blocks):
    return _k_quant(blocks, _nibbles(blocks[:, 16:].reshape(-1, 4, 32)).transpose(1, 2).reshape(-1, 8, 32))


def _q5_k(blocks):
    low = _nibbles(blocks[:, 48:].reshape(-1, 4, 32)).transpose(1, 2).reshape(-1, 8, 32)
    shifts = torch.arange(8, dtype=torch.uint8, device=blocks.device).reshape(1, 8, 1)
    high = (blocks[:, 16:48].reshape(-1, 1, 32) >> shifts) & 1
    return _k_quant(blocks, low | (high << 4))


def _q6_k(blocks):
    n = len(blocks)
    low = _nibbles(blocks[:, :128].reshape(n, 2, 64)).transpose(1, 2)              # [n, half, nibble, 64]
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=blocks.device).reshape(1, 1, 4, 1)
    high = (blocks[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 3                 # [n, half, shift, 32]
    q = (low.reshape(n, 8, 32) | (high.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(blocks, 208) * scales).reshape(n, 16, 1)
    return (d * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


def _int4_g128(blocks):
    q = _nibbles(blocks[:, 4:]).reshape(len(blocks), -1).to(torch.int16) - blocks[:, 2:3].to(torch.int16)
    return q.float() * _f16(blocks, 0)


def _fp8_e4m3_g128(blocks):
    scale = blocks[:, :4].contiguous().view(torch.float32)
    return blocks[:, 4:].contiguous().view(torch.float8_e4m3fn).float() * scale


_DEQUANTIZERS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
                 "int4_g128": _int4_g128, "fp8_e4m3_g128": _fp8_e4m3_g128}


def dequantize_ref(raw: torch.Tensor, fmt: str) -> torch.Tensor:
    """uint8 [..., R] rows of `fmt` blocks -> float32 [..., R / nbytes * elems]."""
    f = block_format(fmt)
    if raw.dtype != torch.uint8 or raw.shape[-1] % f.nbytes:
        raise ValueError(f"{fmt} rows must be uint8 of whole {f.nbytes}-byte blocks, got {raw.dtype} "
                         f"{tuple(raw.shape)}")
    blocks = raw.reshape(-1, f.nbytes)
    return _DEQUANTIZERS[fmt](blocks).reshape(*raw.shape[:-1], raw.shape[-1] // f.nbytes * f.elems)


def quant_matmul_ref(x: torch.Tensor, raw: torch.Tensor, fmt: str) -> torch.Tensor:
    """y = x @ W^T for W [N, K] given as `fmt` rows [N, K / elems * nbytes]: W dequantized to float32, rounded to
    x's dtype (the weight a dense model in that dtype would hold), then multiplied in x's dtype."""
    return torch.nn.functional.linear(x, dequantize_ref(raw, fmt).to(x.dtype))
