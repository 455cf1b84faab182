"""x in fixed point for the integer GEMV (quant_int_dots), in plain torch: the ground truth of pack_fixed_x.

Per row of x and group of G columns (the weight format's group): a scale s = max|x| / X_LEVELS and the integers
v = round(x / s) in [-X_LEVELS, X_LEVELS], split into two signed bytes v = 128 h + l (h in [-128, 127], l in
[0, 127]) so that dp4a, which multiplies bytes, takes all 15 bits in two instructions. Word i of a half holds the
bytes of columns i, i + G/4, i + G/2, i + 3G/4 (lowest byte first): the columns whose weights share bytes of one
quant word (block_formats.Plane: word c of a group holds weight j * C + c at bits j * bits).

15 bits, not llama.cpp's 8: with x rounded to int8 per 32 values the embedded model's greedy tokens changed in 1.2%
of 1,000 (docs/benchmarks.md); at 15 bits x's error is below bf16's rounding of the group's largest value.
"""
from __future__ import annotations

import torch

X_LEVELS = 16383


def fixed_x_ref(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] -> (words int32 [M, K / group, 2, group / 4]: the h bytes' words, then the l bytes'; scale
    float32 [M, K / group]; the float32 sum of each group's x, for the formats' shifts)."""
    m, k = x.shape
    groups = x.float().reshape(m, k // group, 4, group // 4)      # [.., byte k of a word, word i]
    amax = groups.abs().amax(dim=(2, 3))
    inverse = torch.where(amax > 0, X_LEVELS / amax, torch.zeros_like(amax))
    v = torch.floor(groups * inverse[..., None, None] + 0.5).to(torch.int32)
    shifts = (8 * torch.arange(4, dtype=torch.int32))[:, None]
    high = (((v >> 7) & 255) << shifts).sum(dim=2, dtype=torch.int32)
    low = ((v & 127) << shifts).sum(dim=2, dtype=torch.int32)
    words = torch.stack([high, low], dim=2)
    return words, amax / X_LEVELS, groups.sum(dim=(2, 3))


def fixed_x_values(words: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """fixed_x_ref's words and scales -> the x they stand for, float32 [M, K] (for tests)."""
    shifts = (8 * torch.arange(4, dtype=torch.int32))[:, None]
    high = (words[:, :, 0, None, :] << (24 - shifts)) >> 24           # sign-extended bytes [M, G's, 4, group / 4]
    low = (words[:, :, 1, None, :] >> shifts) & 255
    v = (high * 128 + low).float() * scale[..., None, None]
    return v.reshape(words.shape[0], -1)
