"""Rotary position embedding (neox / rotate-half layout, as in HF Llama), with Llama-3 and linear scaling."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from localllm.errors import UnsupportedModelError
from localllm.kernels.rotary_ref import rotate_ref, step_rows


def rope_inv_freq(head_dim: int, rope: dict) -> torch.Tensor:
    base = rope.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / rope["factor"]
    if kind == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    raise UnsupportedModelError(f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def rope_parameters(hf_config) -> dict:
    """transformers 5 keeps rope settings in rope_parameters; older configs use rope_theta + rope_scaling."""
    params = getattr(hf_config, "rope_parameters", None)
    if params:
        return dict(params)
    return {"rope_theta": getattr(hf_config, "rope_theta", 10000.0), **(getattr(hf_config, "rope_scaling", None) or {})}


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, rope: dict):
        super().__init__()
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), rope_inv_freq(head_dim, rope))
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def for_step(self, positions: torch.Tensor) -> StepRotary:
        """What every layer of one step needs to rotate its q and k."""
        if positions.is_cuda:
            return StepRotary(positions, self.cos, self.sin, fused=True)
        # looked up once per step and shared by every layer
        return StepRotary(positions, *step_rows(positions, self.cos, self.sin), fused=False)


@dataclass
class StepRotary:
    positions: torch.Tensor
    cos: torch.Tensor   # fused: the [max_pos, D] caches; otherwise this step's rows, [T, 1, D] fp32
    sin: torch.Tensor
    fused: bool         # GPU: rotated inside the attention layer's one norm + rotary + K/V-store launch

    def apply(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, Hq, D], k: [T, Hkv, D], rotated by plain torch (the path of the unfused step)."""
        return rotate_ref(q, self.cos, self.sin), rotate_ref(k, self.cos, self.sin)
