"""Builds one rank's model with every layer's weight storage decided up front (dense in the model dtype, or
quantized blocks: layers/quantized.py, loader/weight_plan.py), and names what it holds for the status displays."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from localllm.layers.quantized import deferred_weights, place_weights
from localllm.loader.weight_plan import CheckpointQuant, checkpoint_name, checkpoint_quant, shard_ids, storage_spans
from localllm.models import model_class
from localllm.quantization import LABELS, canonical, is_recipe


def build_model(hf_config, model_dir: Path | None, quantization: str, device: torch.device, dtype: torch.dtype,
                device_type: str | None = None) -> tuple[nn.Module, CheckpointQuant]:
    """The model with storage for its weights, not yet filled (model_dir None = random weights to come).
    device_type: the device the storage is planned for, when building on another (meta, for sizing)."""
    quant = checkpoint_quant(model_dir, hf_config)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), deferred_weights():
            model = model_class(hf_config)(hf_config)
    finally:
        torch.set_default_dtype(default_dtype)
    spans = storage_spans(model, quant, quantization, device_type or device.type)
    place_weights(model, spans, device, dtype, packed=(device_type or device.type) == "cuda")
    return model, quant


def weight_bytes(model: nn.Module) -> int:
    """The memory the weights take, as stored (a tied embedding counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def weights_label(model: nn.Module, quant: CheckpointQuant, quantization: str) -> str:
    """The quantization the weights run in: the checkpoint's (Q4_K_M, AWQ-int4) when kept, the format they were
    quantized to at load (Q8_0, int4-g128, ...), or "" when they run dense (in the model dtype)."""
    if not any(getattr(m, "layout", None) is not None for m in model.modules()):
        return ""
    if is_recipe(quantization):
        recipe = canonical(quantization)
        return LABELS.get(recipe, recipe.upper())
    return quant.label or "quantized"


@torch.no_grad()
def dequantized_weights(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights kept as blocks, dequantized to `dtype` on the CPU under their checkpoint names (q_proj.weight,
    ...): the same weights as a dense model, for comparing one with the other. One rank's model (tensor
    parallelism 1) only."""
    out = {}
    for name, module in model.named_modules():
        layout = getattr(module, "layout", None)
        if layout is None or name == "lm_head" and module.weight is model.model.embed_tokens.weight:
            continue
        dense = layout.dequantize(module.weight).to(dtype).cpu()
        for shard in shard_ids(model, name):
            first, count = module.shard_rows(shard)[:2]
            out[checkpoint_name(model, name, shard)] = dense[first:first + count]
    return out
