"""Plain-torch quantizers into the block formats of quant_blocks_ref, on any device: for quantizing a dense
checkpoint at load, for random-weight benchmarks and for tests.

Q4_0, Q4_1 and Q8_0 reproduce `gguf.quants.quantize` (llama.cpp's reference quantizers) bit for bit. The K-quants
and int4_g128 are plain round-to-nearest on each group's min/max, not llama.cpp's search for the best scales: the
blocks are valid and decode as those formats define, but a file made by llama-quantize is slightly more accurate.
fp8_e4m3_g128 scales each block of 128 to the format's largest value (448) and rounds to nearest.
"""
from __future__ import annotations

import torch

from localllm.kernels.block_formats import QK_K, block_format


def _f16_bytes(values: torch.Tensor) -> torch.Tensor:
    """float [n] -> its float16 bytes [n, 2]."""
    return values.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def _pack_halves(q: torch.Tensor) -> torch.Tensor:
    """[..., 2, B] nibbles -> [..., B] bytes: the first half in the low nibbles, the second in the high ones."""
    return q[..., 0, :] | (q[..., 1, :] << 4)


def _round_away(v: torch.Tensor) -> torch.Tensor:
    """Rounds half away from zero, with gguf.quants.np_roundf's exact arithmetic."""
    a = v.abs()
    floored = torch.floor(a)
    return torch.sign(v) * (floored + torch.floor(2 * (a - floored)))


def _q8_0(x):
    d = x.abs().amax(-1, keepdim=True) / 127
    q = _round_away(x * _inverse(d)).to(torch.int8).view(torch.uint8)
    return torch.cat((_f16_bytes(d), q), dim=1)


def _q4_0(x):
    peak = torch.gather(x, 1, x.abs().argmax(-1, keepdim=True))
    d = peak / -8
    q = torch.trunc(x * _inverse(d) + 8.5).clamp(0, 15).to(torch.uint8)
    return torch.cat((_f16_bytes(d), _pack_halves(q.reshape(-1, 2, 16))), dim=1)


def _q4_1(x):
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    d = (hi - lo) / 15
    q = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp(0, 15).to(torch.uint8)
    return torch.cat((_f16_bytes(d), _f16_bytes(lo), _pack_halves(q.reshape(-1, 2, 16))), dim=1)


def _as_f16(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float16).float()


def _k_scales_bytes(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """The inverse of quant_blocks_ref.k_scales_mins: 8 six-bit scales and mins [n, 8] -> 12 bytes [n, 12]."""
    low_sc, high_sc, low_mn, high_mn = sc[:, :4], sc[:, 4:], mn[:, :4], mn[:, 4:]
    return torch.cat((low_sc | ((high_sc >> 4) << 6), low_mn | ((high_mn >> 4) << 6),
                      (high_sc & 0x0F) | ((high_mn & 0x0F) << 4)), dim=1)


def _k_quant(x, nmax: int):
    """Q4_K/Q5_K values: per 32-weight sub-block, w ~ d * sc * q - dmin * m with 6-bit sc, m and q in 0..nmax.
    Returns (d and dmin bytes + scales [n, 16], q [n, 8, 32])."""
    sub = x.reshape(-1, 8, 32)
    low = sub.amin(-1).clamp(max=0)
    scale, offset = (sub.amax(-1) - low) / nmax, -low
    d, dmin = _as_f16(scale.amax(-1, keepdim=True) / 63), _as_f16(offset.amax(-1, keepdim=True) / 63)
    sc = torch.round(scale * _inverse(d)).clamp(0, 63)
    mn = torch.round(offset * _inverse(dmin)).clamp(0, 63)
    step, base = (d * sc).unsqueeze(-1), (dmin * mn).unsqueeze(-1)
    q = torch.round((sub + base) * _inverse(step)).clamp(0, nmax).to(torch.uint8)
    head = torch.cat((_f16_bytes(d), _f16_bytes(dmin), _k_scales_bytes(sc.to(torch.uint8), mn.to(torch.uint8))), 1)
    return head, q


def _q4_k(x):
    head, q = _k_quant(x, 15)
    return torch.cat((head, _pack_halves(q.reshape(-1, 4, 2, 32)).reshape(-1, 128)), dim=1)


def _q5_k(x):
    head, q = _k_quant(x, 31)
    shifts = torch.arange(8, dtype=torch.uint8, device=x.device).reshape(1, 8, 1)
    high = (((q >> 4) & 1) << shifts).sum(1, dtype=torch.uint8)                    # [n, 32]: bit j = sub-block j
    return torch.cat((head, high, _pack_halves((q & 0x0F).reshape(-1, 4, 2, 32)).reshape(-1, 128)), dim=1)


def _q6_k(x):
    sub = x.reshape(-1, 16, 16)
    scale = sub.abs().amax(-1) / 31
    d = _as_f16(scale.amax(-1, keepdim=True) / 127)
    sc = torch.round(scale * _inverse(d)).clamp(-128, 127)
    step = (d * sc).unsqueeze(-1)
    q = (torch.round(sub * _inverse(step)).clamp(-32, 31) + 32).to(torch.uint8).reshape(-1, 2, 128)
    low = _pack_halves((q & 0x0F).reshape(-1, 2, 2, 64)).reshape(-1, 128)
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=x.device).reshape(1, 1, 4, 1)
    high = ((q >> 4).reshape(-1, 2, 4, 32) << shifts).sum(2, dtype=torch.uint8).reshape(-1, 64)
    return torch.cat((low, high, sc.to(torch.int8).view(torch.uint8), _f16_bytes(d)), dim=1)


def _int4_g128(x):
    low, high = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = _as_f16((high - low) / 15)
    zero = torch.round(-low * _inverse(scale)).clamp(0, 15)
    q = (torch.round(x * _inverse(scale)) + zero).clamp(0, 15).to(torch.uint8)
    pad = torch.zeros_like(zero, dtype=torch.uint8)
    return torch.cat((_f16_bytes(scale), zero.to(torch.uint8), pad, _pack_halves(q.reshape(-1, 2, 64))), dim=1)


FP8_MAX = 448.0   # the largest finite float8_e4m3fn


def fp8_blocks(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp8_e4m3_g128 blocks [n, 132] from float8 values [n, 128] and their float32 scales [n] (w = value * scale)."""
    scale_bytes = scale.to(torch.float32).reshape(-1, 1).contiguous().view(torch.uint8)
    return torch.cat((scale_bytes, values.to(torch.float8_e4m3fn).contiguous().view(torch.uint8)), dim=1)


def _fp8_e4m3_g128(x):
    scale = x.abs().amax(-1, keepdim=True) / FP8_MAX
    return fp8_blocks((x * _inverse(scale)).clamp(-FP8_MAX, FP8_MAX), scale)


_QUANTIZERS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
               "int4_g128": _int4_g128, "fp8_e4m3_g128": _fp8_e4m3_g128}
assert QK_K == 256   # the K-quant layouts above are written for 256-weight blocks


def quantize_ref(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """float [..., K] -> uint8 [..., K / elems * nbytes] blocks of `fmt` (K must be whole blocks)."""
    f = block_format(fmt)
    if weight.shape[-1] % f.elems:
        raise ValueError(f"{weight.shape[-1]} columns are not whole {fmt} blocks of {f.elems}")
    blocks = _QUANTIZERS[fmt](weight.reshape(-1, f.elems).float())
    return blocks.reshape(*weight.shape[:-1], weight.shape[-1] // f.elems * f.nbytes)
