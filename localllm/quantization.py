"""How the engine stores a model's weights: Config.quantization (`--quantize`). Plain Python, no torch.

  auto    on a GPU, `native` for a quantized checkpoint and `none` for a dense one
          (engine.quant_choice decides per load); on the CPU a GGUF checkpoint in the default dtype runs `fast`
          when the compiled CPU kernels build (localllm.cpu_kernels), and is otherwise dequantized at load
          (float32, exact).
  none    everything dequantized at load, to the model dtype (float32 on the CPU: the exact path).
  native  kept quantized on any device (on the CPU each matmul dequantizes its weight first: slow, exactly the
          dense conversion's values, for tests).
  fast    kept quantized; on the CPU multiplied by the kernels of layers.cpu_parts: the compiled C kernels over
          the GGUF blocks (x rounded to int16 per 32 values: 100% greedy agreement with the exact path over 1,000
          tokens of chat), or without a C compiler torch's int4 kernel (bfloat16 matmul inputs: 99.3%, and the
          embedded model's answer to the capital-of-France question flips); on a GPU the same as native.
  a format (q4_0, q4_1, q8_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m, int4 = awq = gptq, fp8): every matrix
  quantized at load to that format (round to nearest, localllm.kernels.quantize_ref), from whatever the
  checkpoint holds; also the format of --random-weights benchmarks. On the CPU, q4_0, q4_1 and q8_0 then run the
  compiled kernels as `fast` does (the way for a safetensors model to use them). The _m mixes follow llama.cpp's
  Q4_K_M / Q5_K_M: Q6_K for attn_v and ffn_down in the layers llama.cpp gives more bits, and for the LM head. int4 is
  group-128 int4 with zero points, the layout AWQ and GPTQ checkpoints are repacked into; fp8 is float8 e4m3 with
  a scale per 128 weights, the layout FP8 checkpoints are repacked into. Both leave the embedding and LM head
  dense, as such checkpoints do.

The embedding and LM head stay quantized wherever the checkpoint (or the format) quantizes them: the LM head is
the largest single matrix of a decode step.
"""
from __future__ import annotations

import re

from localllm.kernels.block_formats import BLOCK_FORMATS

MODES = ("auto", "none", "native", "fast")
_K_MIXES = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K"}
_PLAIN = {"q4_0": "Q4_0", "q4_1": "Q4_1", "q8_0": "Q8_0", "q4_k": "Q4_K", "q5_k": "Q5_K", "q6_k": "Q6_K",
          "int4": "int4_g128", "fp8": "fp8_e4m3_g128"}
# recipes that leave the embedding and LM head dense, as checkpoints in those formats do
_DENSE_ENDS = ("int4", "fp8")
LABELS = {"int4": "int4-g128", "fp8": "FP8"}
ALIASES = {"awq": "int4", "gptq": "int4"}
RECIPES = (*_PLAIN, *_K_MIXES)
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def canonical(quantization: str) -> str:
    return ALIASES.get(quantization, quantization)


def check_quantization(quantization: str) -> None:
    if canonical(quantization) not in (*MODES, *RECIPES):
        raise ValueError(f"quantization must be one of {', '.join((*MODES, *RECIPES, *ALIASES))}, "
                         f"got {quantization!r}")


def keeps_blocks(quantization: str, device_type: str) -> bool:
    """Whether a quantized checkpoint's weights stay quantized (else they are dequantized at load)."""
    return quantization in ("native", "fast") or (quantization == "auto" and device_type == "cuda")


# recipes whose blocks the compiled CPU kernels multiply (localllm.cpu_kernels.ops.FORMATS)
_CPU_KERNEL_RECIPES = ("q4_0", "q4_1", "q8_0")


def uses_cpu_kernels(quantization: str, device_type: str) -> bool:
    """Whether the layers kept as blocks run layers.cpu_quant's kernels (else: dequantize, then matmul): `fast`, and
    on the CPU the recipes in the kernels' own formats (a safetensors model quantized at load to Q8_0 runs them)."""
    return device_type == "cpu" and (quantization == "fast" or canonical(quantization) in _CPU_KERNEL_RECIPES)


def is_recipe(quantization: str) -> bool:
    return canonical(quantization) in RECIPES


def _more_bits(layer: int, num_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    eighth = num_layers // 8
    return layer < eighth or layer >= 7 * num_layers // 8 or (layer - eighth) % 3 == 2


def recipe_format(quantization: str, module: str, shard, num_layers: int, cols: int) -> str | None:
    """The block format `quantization` (a recipe) gives the `shard` rows of `module` (our module names:
    model.embed_tokens, model.layers.N.self_attn.qkv_proj, ..., lm_head) whose rows hold `cols` weights; None =
    dense."""
    recipe = canonical(quantization)
    base = _K_MIXES.get(recipe) or _PLAIN[recipe]
    fmt = base
    if module in ("model.embed_tokens", "lm_head") and recipe in _DENSE_ENDS:
        return None
    if module == "lm_head" and base in ("Q4_K", "Q5_K"):
        fmt = "Q6_K"
    layer = _LAYER.match(module)
    if recipe in _K_MIXES and layer and (shard == "v" or module.endswith("mlp.down_proj")):
        fmt = "Q6_K" if _more_bits(int(layer.group(1)), num_layers) else base
    for candidate in (fmt, "Q8_0"):   # llama.cpp too falls back when rows are not whole 256-weight blocks
        if cols % BLOCK_FORMATS[candidate].elems == 0:
            return candidate
    return None
