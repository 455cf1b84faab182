"""What `--quantize auto` means for one load (localllm.quantization): on a GPU, a quantized checkpoint is
dequantized to bf16 when its dense weights fit in DENSE_SHARE of the GPUs' memory, and kept as blocks only when
they do not. The block kernels decode one sequence faster than bf16, but a step of several rows (a batch, a
speculative verify step) or a prompt costs more than bf16's (docs/quantization.md has the figures), so the dense
path wherever it fits; blocks are what lets a model that does not fit dense run at all. On the CPU, a GGUF
checkpoint in the default dtype runs `fast` when the compiled CPU kernels are there (localllm.cpu_kernels: 100%
greedy agreement with the exact path over 1,000 tokens of chat, docs/benchmarks.md) and is dequantized to float32
otherwise; `--dtype float32` or `--quantize none` asks for the exact path."""
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
    model) on this machine's GPUs, or `fast` on its CPU (the module docstring says when); other settings are
    returned as they are."""
    device = resolve_device(config)
    if config.quantization != "auto":
        return config
    if device.type == "cpu":
        return replace(config, quantization="fast") if _cpu_kernels_fit(config, model) else config
    if device.type != "cuda":
        return config
    dense = describe(resolve_reference(model).local_files())["dense_weight_bytes"]
    gpus = config.tensor_parallel_size or 1
    budget = DENSE_SHARE * gpus * torch.cuda.get_device_properties(device).total_memory
    return replace(config, quantization="none" if dense <= budget else "native")


def _cpu_kernels_fit(config: Config, model: str | None) -> bool:
    if config.dtype != "auto" or resolve_reference(model).local_files().suffix != ".gguf":
        return False
    from localllm.cpu_kernels.build import library

    return library() is not None
