"""What `--quantize auto` means for one load (localllm.quantization): on a GPU, a quantized checkpoint is
dequantized to bf16 when its dense weights fit in DENSE_SHARE of the GPUs' memory, and kept as blocks only when
they do not. The block kernels still read their weights far below the copy bandwidth (docs/quantization.md has
the figures), so the dense path decodes faster wherever it fits; blocks are what lets a model that does not fit
dense run at all. On the CPU `auto` stays what keeps_blocks makes of it (dequantized, exact)."""
from __future__ import annotations

from dataclasses import replace

import torch

from localllm.config import Config
from localllm.engine.core import resolve_device
from localllm.hub.model_info import describe
from localllm.hub.reference import resolve_reference

# the rest is left to the KV pool, activations and CUDA graphs
DENSE_SHARE = 0.6


def settle_quantization(config: Config, model: str | None) -> Config:
    """config with `auto` made `none` or `native` for `model` (a name as the user gave it; None = the embedded
    model) on this machine's GPUs; other settings, and any CPU load, are returned as they are."""
    device = resolve_device(config)
    if config.quantization != "auto" or device.type != "cuda":
        return config
    dense = describe(resolve_reference(model).local_files())["dense_weight_bytes"]
    gpus = config.tensor_parallel_size or 1
    budget = DENSE_SHARE * gpus * torch.cuda.get_device_properties(device).total_memory
    return replace(config, quantization="none" if dense <= budget else "native")
