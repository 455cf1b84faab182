"""What a checkpoint's weights are (dense, GGUF blocks, AWQ/GPTQ int4) and how each layer stores them
(localllm.quantization decides: kept quantized, dequantized, or quantized at load to a recipe's formats).

The storage plan is made on a model whose weights are still deferred (layers/quantized.py), from the checkpoint's
headers only, so that every layer gets its final storage before any weight is read."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from localllm.errors import CorruptModelError, UnsupportedModelError
from localllm.hub.model_info import safetensors_header, safetensors_metadata
from localllm.kernels.block_formats import block_format
from localllm.loader.gguf import BLOCK_FORMATS_KEY
from localllm.loader.fp8 import fp8_tile
from localllm.loader.int4 import Int4Spec, int4_spec
from localllm.quantization import is_recipe, keeps_blocks, recipe_format


@dataclass(frozen=True)
class CheckpointQuant:
    """How a checkpoint's matrices are stored."""
    label: str | None = None                                  # Q4_K_M, AWQ-int4, FP8, ...; None: dense
    # HF weight name -> block format: raw block rows (GGUF), or what the loader repacks a layer into (AWQ/GPTQ
    # int4_g128 from *.qweight & co, FP8 fp8_e4m3_g128 from a float8 *.weight and its scale)
    block_formats: dict[str, str] = field(default_factory=dict)
    int4: Int4Spec | None = None
    fp8: bool = False
    fp8_tile: tuple[int, int] | None = None                   # FP8 scales per tile of (bn, bk), else per tensor/row


def _quantization_config(hf_config) -> dict | None:
    config = getattr(hf_config, "quantization_config", None)
    if not config:
        return None
    return config if isinstance(config, dict) else config.to_dict()


def checkpoint_quant(model_dir: Path | None, hf_config) -> CheckpointQuant:
    """Read from config.json and the safetensors headers (a GGUF conversion's metadata, AWQ/GPTQ's names, FP8's
    dtypes). Raises for a quantization_config localllm cannot run."""
    files = sorted(model_dir.glob("*.safetensors")) if model_dir is not None else []
    config = _quantization_config(hf_config)
    if config is not None:
        headers = {n: t for f in files for n, t in safetensors_header(f).items()}
        if config.get("quant_method") in ("awq", "gptq"):
            spec = int4_spec(config)
            names = [n.removesuffix(".qweight") + ".weight" for n in headers if n.endswith(".qweight")]
            return CheckpointQuant(f"{spec.method.upper()}-int4", dict.fromkeys(names, "int4_g128"), spec)
        if config.get("quant_method") not in ("fp8", "compressed-tensors"):
            raise UnsupportedModelError(f"quantization method {config.get('quant_method')!r} is not supported "
                                        "(supported: awq, gptq, fp8, compressed-tensors FP8)")
        tile = fp8_tile(config)
        names = [n for n, t in headers.items() if t["dtype"] == "F8_E4M3" and n.endswith(".weight")]
        return CheckpointQuant("FP8", dict.fromkeys(names, "fp8_e4m3_g128"), fp8=True, fp8_tile=tile)
    metadata = safetensors_metadata(files[0]) if files else {}
    try:
        formats = json.loads(metadata.get(BLOCK_FORMATS_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise CorruptModelError(f"{files[0]}: its {BLOCK_FORMATS_KEY} metadata is not JSON ({e})") from None
    return CheckpointQuant(metadata.get("quantization"), formats)


def checkpoint_target(model: nn.Module, name: str) -> tuple[str, object]:
    """Our parameter name and shard id of a checkpoint tensor (q_proj.weight -> qkv_proj.weight, shard "q")."""
    for hf_part, (our_part, shard_id) in model.packed_modules.items():
        if f".{hf_part}." in name:
            return name.replace(f".{hf_part}.", f".{our_part}."), shard_id
    return name, None


def checkpoint_name(model: nn.Module, module_name: str, shard_id) -> str:
    """The inverse of checkpoint_target for a weight."""
    prefix, _, part = module_name.rpartition(".")
    for hf_part, (our_part, shard) in model.packed_modules.items():
        if our_part == part and shard == shard_id:
            return f"{prefix}.{hf_part}.weight"
    return f"{module_name}.weight"


def shard_ids(model: nn.Module, module_name: str) -> list:
    part = module_name.rpartition(".")[2]
    return [shard for our_part, shard in model.packed_modules.values() if our_part == part] or [None]


def storage_spans(model: nn.Module, quant: CheckpointQuant, quantization: str,
                  device_type: str) -> dict[str, list[tuple[int, int, str]]]:
    """For each layer to keep as blocks, its (first row, rows, format) spans (layers/quantized.place_weights);
    layers left out are dense. A layer is kept quantized only if all of its checkpoint tensors are."""
    keep = keeps_blocks(quantization, device_type)
    num_layers = getattr(model.config, "num_hidden_layers", 0)
    spans = {}
    for name, module in model.named_modules():
        if not hasattr(module, "shard_rows"):
            continue
        cols = module.weight.shape[1]
        shards = shard_ids(model, name)
        if is_recipe(quantization):
            formats = [recipe_format(quantization, name, s, num_layers, cols) for s in shards]
        elif keep:
            formats = [quant.block_formats.get(checkpoint_name(model, name, s)) for s in shards]
        else:
            continue
        if None in formats:
            continue
        for fmt in set(formats):
            if cols % block_format(fmt).elems:
                raise UnsupportedModelError(
                    f"{name}: {cols} input features per GPU are not whole {fmt} blocks of {block_format(fmt).elems} "
                    "weights; choose another tensor-parallel degree, or --quantize none")
        spans[name] = [(*module.shard_rows(s)[:2], fmt) for s, fmt in zip(shards, formats)]
    return spans
