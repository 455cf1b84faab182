"""Plain-torch reference of rope_store.norm_rope_store: the per-head q/k RMSNorm (Qwen3), the rotary embedding and
the K/V store, one after the other, exactly as the unfused layers do them (and the CPU path of the attention layer)."""
from __future__ import annotations

import torch

from localllm.kernels.paged_attention_ref import store_kvcache
from localllm.kernels.rmsnorm_ref import rms_norm_ref
from localllm.kernels.rotary_ref import rotary_ref


def norm_rope_store_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        cos_cache: torch.Tensor, sin_cache: torch.Tensor, k_cache: torch.Tensor,
                        v_cache: torch.Tensor, slot_mapping: torch.Tensor, q_norm_weight: torch.Tensor | None = None,
                        k_norm_weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Returns the rotated q [T, Hq, D]; stores the rotated k and v [T, Hkv, D] into their cache slots."""
    if q_norm_weight is not None:
        q, k = rms_norm_ref(q, q_norm_weight, eps), rms_norm_ref(k, k_norm_weight, eps)
    q, k = rotary_ref(positions, q, k, cos_cache, sin_cache)
    store_kvcache(k, v, k_cache, v_cache, slot_mapping)
    return q
