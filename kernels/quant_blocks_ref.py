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
    """The float16 at byte `offset` of each block, [n, 1]."""
    return blocks[:, offset:offset + 2].contiguous().view(torch.float16)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, B] bytes -> [n, 2, B]: the low nibbles of all B bytes, then the high ones."""
    return torch.stack((qs & 0x0F, qs >> 4), dim=1)


def k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins of Q4_K/Q5_K blocks from their 12 packed bytes [n, 12] -> 2 x [n, 8].
    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top bits of scales 4-7; bytes 4-7 mins 0-3 and the top bits of
    mins 4-7; bytes 8-11 the low nibbles of scales 4-7 (low) and mins 4-7 (high)."""
    d, m, m_d = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat((d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)), dim=1)
    mn = torch.cat((m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)), dim=1)
    return sc, mn


def _k_low_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K's 128 bytes of nibbles [n, 128] -> [n, 256] in weight order: 4 chunks of 32 bytes, the low
    nibbles of a chunk then its high ones."""
    return _nibbles(qs.reshape(-1, 4, 32)).transpose(1, 2).reshape(-1, QK_K)


def _k_fields(blocks: torch.Tensor) -> dict:
    sc, mn = k_scales_mins(blocks[:, 4:16])
    return {"sc": sc, "mn": mn, "d": _f16(blocks, 0), "dmin": _f16(blocks, 2)}


def _q5_high(bits: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device).reshape(1, 8, 1)
    return ((bits.reshape(-1, 1, 32) >> shifts) & 1).reshape(-1, QK_K)


def _q6_fields(blocks: torch.Tensor) -> dict:
    n = len(blocks)
    low = _nibbles(blocks[:, :128].reshape(n, 2, 64)).transpose(1, 2)              # [n, half, nibble, 64]
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=blocks.device).reshape(1, 1, 4, 1)
    high = (blocks[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 3                 # [n, half, shift, 32]
    return {"q": low.reshape(n, QK_K), "qh": high.reshape(n, QK_K), "sc": blocks[:, 192:208].contiguous().view(
        torch.int8), "d": _f16(blocks, 208)}


# Each format's fields, per block, in the dtypes the block stores them (block_formats.PLANES names them): the
# quants q (uint8 values, the weights' order), their high bits qh, and the scale fields.
_FIELDS = {
    "Q4_0": lambda b: {"q": _nibbles(b[:, 2:]).reshape(len(b), -1), "d": _f16(b, 0)},
    "Q4_1": lambda b: {"q": _nibbles(b[:, 4:]).reshape(len(b), -1), "d": _f16(b, 0), "m": _f16(b, 2)},
    "Q8_0": lambda b: {"q": b[:, 2:], "d": _f16(b, 0)},
    "Q4_K": lambda b: {"q": _k_low_nibbles(b[:, 16:]), **_k_fields(b)},
    "Q5_K": lambda b: {"q": _k_low_nibbles(b[:, 48:]), "qh": _q5_high(b[:, 16:48]), **_k_fields(b)},
    "Q6_K": _q6_fields,
    "int4_g128": lambda b: {"q": _nibbles(b[:, 4:]).reshape(len(b), -1), "d": _f16(b, 0), "zero": b[:, 2:3]},
    "fp8_e4m3_g128": lambda b: {"q": b[:, 4:], "d": b[:, :4].contiguous().view(torch.float32)},
}


def _k_values(f: dict, q: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: w = (d * scale) * q - dmin * min, per 32-weight sub-block."""
    n = len(q)
    d = (f["d"].float() * f["sc"].float()).reshape(n, 8, 1)
    dm = (f["dmin"].float() * f["mn"].float()).reshape(n, 8, 1)
    return (d * q.reshape(n, 8, 32).float() - dm).reshape(n, QK_K)


def _q6_values(f: dict) -> torch.Tensor:
    n = len(f["q"])
    q = (f["q"] | (f["qh"] << 4)).to(torch.int8) - 32
    d = (f["d"].float() * f["sc"].float()).reshape(n, 16, 1)
    return (d * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


# The weights of blocks from their fields: the float32 operations of gguf.quants.dequantize, in its order.
_VALUES = {
    "Q4_0": lambda f: f["d"].float() * (f["q"].to(torch.int8) - 8).float(),
    "Q4_1": lambda f: f["d"].float() * f["q"].float() + f["m"].float(),
    "Q8_0": lambda f: f["q"].contiguous().view(torch.int8).float() * f["d"].float(),
    "Q4_K": lambda f: _k_values(f, f["q"]),
    "Q5_K": lambda f: _k_values(f, f["q"] | (f["qh"] << 4)),
    "Q6_K": _q6_values,
    "int4_g128": lambda f: (f["q"].to(torch.int16) - f["zero"].to(torch.int16)).float() * f["d"].float(),
    "fp8_e4m3_g128": lambda f: f["q"].contiguous().view(torch.float8_e4m3fn).float() * f["d"],
}


def block_fields(blocks: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """uint8 [n, nbytes] blocks -> their fields, each [n, count per block] (block_formats.PLANES names them)."""
    return _FIELDS[fmt](blocks)


def field_values(fields: dict[str, torch.Tensor], fmt: str) -> torch.Tensor:
    """Fields of n blocks (block_fields' form) -> their weights, float32 [n, elems]."""
    return _VALUES[fmt](fields)


def dequantize_ref(raw: torch.Tensor, fmt: str) -> torch.Tensor:
    """uint8 [..., R] rows of `fmt` blocks -> float32 [..., R / nbytes * elems]."""
    f = block_format(fmt)
    if raw.dtype != torch.uint8 or raw.shape[-1] % f.nbytes:
        raise ValueError(f"{fmt} rows must be uint8 of whole {f.nbytes}-byte blocks, got {raw.dtype} "
                         f"{tuple(raw.shape)}")
    blocks = raw.reshape(-1, f.nbytes)
    return field_values(block_fields(blocks, fmt), fmt).reshape(*raw.shape[:-1], raw.shape[-1] // f.nbytes * f.elems)


def quant_matmul_ref(x: torch.Tensor, raw: torch.Tensor, fmt: str) -> torch.Tensor:
    """y = x @ W^T for W [N, K] given as `fmt` rows [N, K / elems * nbytes]: W dequantized to float32, rounded to
    x's dtype (the weight a dense model in that dtype would hold), then multiplied in x's dtype."""
    return torch.nn.functional.linear(x, dequantize_ref(raw, fmt).to(x.dtype))
