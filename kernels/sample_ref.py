"""Plain-torch token choice from logits by temperature alone (no top-k, top-p or min-p), the reference of
sample.sample_tokens: greedy rows (temperature 0) take their first best token, the others one draw by inverse CDF
from the softmax of logits / temperature, given a uniform in [0, 1) per row. NaN logits are never chosen while a
finite one is left, +inf ones share the row's probability, and a row with no finite logit takes token 0."""
from __future__ import annotations

import math

import torch

FLOAT32_MAX = torch.finfo(torch.float32).max


def preferences(logits: torch.Tensor) -> torch.Tensor:
    """A float32 copy where NaN is -inf (never chosen while any other token is left) and +inf the largest float32
    (the tokens at +inf share the probability, where they would make the softmax NaN); -inf stays impossible.
    Whatever a model or an extreme setting produces, what comes out of sampling is then a token of the vocabulary."""
    return logits.float().nan_to_num(nan=-math.inf, posinf=FLOAT32_MAX, neginf=-math.inf)


def sample_tokens_ref(logits: torch.Tensor, temperature: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """logits [R, V] (any float dtype), temperature [R] (0 = greedy), uniforms [R] -> token ids [R] (long)."""
    greedy = temperature == 0
    scaled = preferences(logits.float() / torch.where(greedy, 1.0, temperature.float())[:, None])
    nothing_left = scaled.amax(-1) == -math.inf
    weights = torch.softmax(scaled.masked_fill(nothing_left[:, None], 0.0), -1)
    cumulative = weights.cumsum(-1)
    drawn = torch.searchsorted(cumulative, (uniforms * cumulative[:, -1])[:, None], right=True).squeeze(1)
    drawn = drawn.clamp(max=logits.shape[1] - 1)
    chosen = torch.where(greedy, scaled.argmax(-1), drawn)
    return chosen.masked_fill(nothing_left, 0)
