"""Plain-torch neox-style (rotate-half) rotary embedding, part of the reference of rope_store.norm_rope_store and the
CPU path of the model's rotary layer: out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]),
rounded where transformers' apply_rotary_pos_emb rounds it in x's dtype: cos and sin, each product, the sum (no
rounding at all in float32), so that bf16 models round their q and k as transformers does."""
from __future__ import annotations

import torch


def step_rows(positions: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor):
    """The cos and sin rows of a step's tokens, [T, 1, D] in fp32, shaped to broadcast over heads: looked up once
    and shared by every layer's rotate_ref."""
    return cos_cache[positions].unsqueeze(1).float(), sin_cache[positions].unsqueeze(1).float()


def rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated by its tokens' rows (cos, sin from step_rows)."""
    def rounded(values: torch.Tensor) -> torch.Tensor:
        return values.to(x.dtype).float()

    xf = x.float()
    x1, x2 = xf.chunk(2, -1)
    return (rounded(xf * rounded(cos)) + rounded(torch.cat((-x2, x1), dim=-1) * rounded(sin))).to(x.dtype)


def rotary_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_cache: torch.Tensor,
               sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D] and k [T, Hkv, D] at positions [T], from cos/sin caches [max_pos, D]."""
    cos, sin = step_rows(positions, cos_cache, sin_cache)
    return rotate_ref(q, cos, sin), rotate_ref(k, cos, sin)
