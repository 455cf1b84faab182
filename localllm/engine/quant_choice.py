"""What `--quantize auto` means for one load (localllm.quantization): on a GPU, a quantized checkpoint keeps its
blocks (`native`): its weights take about its file size, and its kernels decode one sequence 1.4-1.8x faster than
bf16 (docs/benchmarks.md); steps of many rows (a full batch, a long prompt) are faster dense, which `--quantize
none` asks for. A GGUF whose blocks a tensor-parallel degree would cut is dequantized instead. On the CPU, a GGUF
checkpoint in the default dtype runs `fast` when the compiled CPU kernels are there (localllm.cpu_kernels: 100%
greedy agreement with the exact path over 1,000 tokens of chat, docs/benchmarks.md) and is dequantized to float32
otherwise; `--dtype float32` or `--quantize none` asks for the exact path."""
from __future__ import annotations

from dataclasses import replace

from localllm.config import Config
from localllm.engine.core import resolve_device
from localllm.hub.model_info import describe, gguf_blocks_split_evenly
from localllm.hub.reference import resolve_reference


def settle_quantization(config: Config, model: str | None) -> Config:
    """config with `auto` made `none` or `native` for `model` (a name as the user gave it; None = the embedded
    model) on a GPU, or `fast` on the CPU (the module docstring says when); other settings are returned as they
    are."""
    device = resolve_device(config)
    if config.quantization != "auto":
        return config
    if device.type == "cpu":
        return replace(config, quantization="fast") if _cpu_kernels_fit(config, model) else config
    if device.type != "cuda":
        return config
    files = resolve_reference(model).local_files()
    info = describe(files)
    quantized = info["gpu_weight_bytes"] < info["dense_weight_bytes"]
    degree = config.tensor_parallel_size or 1
    if quantized and degree > 1 and files.suffix == ".gguf" and not gguf_blocks_split_evenly(files, degree):
        quantized = False   # a rank would get part of a block of some matrix's inputs: dense weights split anywhere
    return replace(config, quantization="native" if quantized else "none")


def _cpu_kernels_fit(config: Config, model: str | None) -> bool:
    if config.dtype != "auto" or resolve_reference(model).local_files().suffix != ".gguf":
        return False
    from localllm.cpu_kernels.build import library

    return library() is not None
