"""Fills one of our model modules from a Hugging Face safetensors directory (never pickle files). Tensors are
read as slices of the memory-mapped files, so with tensor parallelism each rank reads only its own shard."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from localllm.errors import CorruptModelError, ModelNotFoundError, first_line
from localllm.layers.shards import whole
from localllm.loader.pooling_config import read_pooling_config


def _param_and_shard(model: nn.Module, name: str, params: dict):
    for hf_part, (our_part, shard_id) in model.packed_modules.items():
        if f".{hf_part}." in name:
            name, shard = name.replace(f".{hf_part}.", f".{our_part}."), shard_id
            break
    else:
        shard = None
    # a checkpoint of the bare decoder (what sentence-transformers saves: Qwen3-Embedding) names its tensors
    # without the "model." of the *ForCausalLM wrapper
    if name not in params and f"model.{name}" in params:
        name = f"model.{name}"
    return name, shard


@torch.no_grad()
def load_weights(model: nn.Module, model_dir: Path) -> bool:
    """Returns whether the LM head was loaded: an embedding model (a sentence-transformers directory) may come
    without one, and then computes embeddings only."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no .safetensors weights in {model_dir}")
    params = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    loaded: set[str] = set()
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if "rotary_emb" in name or (tied and name == "lm_head.weight"):
                        continue
                    target, shard_id = _param_and_shard(model, name, params)
                    if target not in params:
                        raise CorruptModelError(f"{file.name}: unexpected tensor {name!r} for this architecture")
                    module = modules[target.rsplit(".", 1)[0]]
                    tensor = f.get_slice(name)
                    if hasattr(module, "load_weight"):
                        module.load_weight(params[target], tensor, shard_id)
                    else:
                        params[target].data.copy_(whole(tensor))
                    loaded.add(target if shard_id is None else f"{target}:{shard_id}")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CorruptModelError(f"cannot read weights {file}: {first_line(e)}") from None
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
