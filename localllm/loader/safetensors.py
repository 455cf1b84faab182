"""Fills one of our model modules from a Hugging Face safetensors directory (never pickle files). Tensors are
read as slices of the memory-mapped files, so with tensor parallelism each rank reads only its own shard.

Quantized checkpoints arrive as layers/quantized.BlockSource: a GGUF conversion's raw block rows (sliced like the
dense tensor they stand for), or an AWQ/GPTQ layer's tensors repacked into int4 blocks (read whole, then sliced).
Each layer stores what it receives as its storage plan says (weight_plan.py)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from localllm.errors import CorruptModelError, ModelNotFoundError, first_line
from localllm.layers.quantized import BlockSource
from localllm.layers.shards import whole
from localllm.loader.fp8 import SCALE_SUFFIXES, fp8_weight_blocks
from localllm.loader.int4 import PARTS, int4_blocks
from localllm.loader.pooling_config import read_pooling_config
from localllm.loader.weight_plan import CheckpointQuant, checkpoint_target


def _tensor(handles: dict, name: str) -> torch.Tensor:
    return handles[name].get_tensor(name)


def _checkpoint_tensors(handles: dict, quant: CheckpointQuant) -> Iterator[tuple[str, object]]:
    """(name, tensor) of every checkpoint tensor, an AWQ/GPTQ layer's parts folded into one `<layer>.weight`, an
    FP8 weight and its scale into another."""
    for name, handle in handles.items():
        prefix, _, part = name.rpartition(".")
        if quant.int4 is not None and part in PARTS:
            if part == "qweight":
                parts = {p: _tensor(handles, f"{prefix}.{p}") for p in PARTS if f"{prefix}.{p}" in handles}
                yield f"{prefix}.weight", BlockSource.of_rows(int4_blocks(quant.int4, parts), "int4_g128")
            continue
        if quant.fp8 and name.endswith(SCALE_SUFFIXES):
            continue
        if quant.fp8 and name in quant.block_formats:
            scale = next(f"{prefix}{s}" for s in SCALE_SUFFIXES[:2] if f"{prefix}{s}" in handles)
            blocks = fp8_weight_blocks(_tensor(handles, name), _tensor(handles, scale), quant.fp8_tile)
            yield name, BlockSource.of_rows(blocks, "fp8_e4m3_g128")
            continue
        tensor = handle.get_slice(name)
        fmt = quant.block_formats.get(name)
        yield name, tensor if fmt is None else BlockSource.of_rows(tensor, fmt)


def _open(stack: contextlib.ExitStack, file: Path):
    try:
        return stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
    except (SafetensorError, OSError) as e:
        raise CorruptModelError(f"cannot read weights {file}: {first_line(e)}") from None


def _target(model: nn.Module, name: str, params: dict):
    """Our parameter name and shard id of a checkpoint tensor."""
    target, shard = checkpoint_target(model, name)
    # a checkpoint of the bare decoder (what sentence-transformers saves: Qwen3-Embedding) names its tensors
    # without the "model." of the *ForCausalLM wrapper
    if target not in params and f"model.{target}" in params:
        target = f"model.{target}"
    return target, shard


@torch.no_grad()
def load_weights(model: nn.Module, model_dir: Path, quant: CheckpointQuant | None = None) -> bool:
    """Returns whether the LM head was loaded: an embedding model (a sentence-transformers directory) may come
    without one, and then computes embeddings only."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no .safetensors weights in {model_dir}")
    quant = quant or CheckpointQuant()
    params = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    loaded: set[str] = set()
    try:
        with contextlib.ExitStack() as stack:
            handles = {}
            for file in files:
                f = _open(stack, file)
                handles.update((name, f) for name in f.keys())
            for name, tensor in _checkpoint_tensors(handles, quant):
                if "rotary_emb" in name or (tied and name == "lm_head.weight"):
                    continue
                target, shard_id = _target(model, name, params)
                if target not in params:
                    raise CorruptModelError(f"{model_dir.name}: unexpected tensor {name!r} for this architecture")
                module = modules[target.rsplit(".", 1)[0]]
                if hasattr(module, "load_weight"):
                    module.load_weight(params[target], tensor, shard_id)
                else:
                    params[target].data.copy_(whole(tensor))
                loaded.add(target if shard_id is None else f"{target}:{shard_id}")
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, StopIteration) as e:
        raise CorruptModelError(f"cannot read weights in {model_dir}: {first_line(e)}") from None
    return _check_complete(model, params, loaded, tied, model_dir)


def _check_complete(model: nn.Module, params: dict, loaded: set[str], tied: bool, model_dir: Path) -> bool:
    """Whether the LM head was loaded; raises when anything else is missing."""
    # a merged projection (qkv_proj, gate_up_proj) is complete once each of its checkpoint tensors has arrived
    shards_of: dict[str, list] = {}
    for our_part, shard_id in model.packed_modules.values():
        shards_of.setdefault(our_part, []).append(shard_id)
    expected = set()
    for target in params:
        if tied and target == "lm_head.weight":
            continue
        shards = shards_of.get(target.rsplit(".", 2)[-2], [])
        expected |= {f"{target}:{s}" for s in shards} if shards else {target}
    missing = sorted(expected - loaded)
    if missing == ["lm_head.weight"] and read_pooling_config(model_dir) is not None:
        return False
    if missing:
        raise CorruptModelError(f"weights in {model_dir} lack {len(missing)} tensors, e.g. {missing[0]}")
    return True
