"""Readies a model loaded on the CPU with `--quantize fast` (localllm.quantization) for the CPU kernels: each layer
kept as blocks gets its matmul (layers.cpu_parts); with the compiled kernels (localllm.cpu_kernels) the norm,
activation and attention layers get them too, and a plain Llama-style model's decode steps become one compiled call
(layers.cpu_decode)."""
from __future__ import annotations

from torch import nn

from localllm.cpu_kernels.build import library
from localllm.layers.cpu_decode import attach_decode_step
from localllm.layers.cpu_parts import CpuQuantMatmul


def attach_cpu_kernels(model: nn.Module) -> int:
    """Gives every CPU layer kept as blocks its CpuQuantMatmul (layers.quantized.apply_weight uses it), and, with
    the compiled kernels, every norm, activation and attention layer of a float32 model its compiled path
    (`cpu_ops`) and the model its one-call decode step where it qualifies; returns how many matmuls it made. A
    weight shared by two modules (tied embedding and LM head) is prepared once."""
    lib = library()
    made: dict[int, CpuQuantMatmul] = {}
    for module in model.modules():
        if lib is not None and hasattr(module, "cpu_ops"):
            module.cpu_ops = lib
        layout = getattr(module, "layout", None)
        if layout is None or module.weight.is_cuda:
            continue
        key = id(module.weight)
        if key not in made:
            made[key] = CpuQuantMatmul(layout, module.weight.data, lib)
        module.cpu_matmul = made[key]
    attach_decode_step(model, lib)
    return len(made)
