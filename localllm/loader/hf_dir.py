"""Config, tokenizer, end-of-sequence ids and pooling of a Hugging Face model directory, with user-facing
errors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from localllm.architectures import hf_architecture
from localllm.errors import CorruptModelError, ModelNotFoundError, UnsupportedModelError, first_line
from localllm.hf_config import HFConfig
from localllm.loader.config_cache import cache_path, read_cached, write_cached
from localllm.loader.pooling_config import PoolingConfig, read_pooling_config
from localllm.loader.tokenizer_facts import tokenizer_eos_id

if TYPE_CHECKING:
    from localllm.loader.tokenizer import Tokenizer


def load_hf_config(model_dir: Path) -> HFConfig:
    """The config's attributes as transformers' AutoConfig gives them; transformers is imported only the first
    time a config is read (loader.config_cache)."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{model_dir} has no config.json")
    config_bytes = path.read_bytes()
    cached = cache_path(config_bytes)
    attributes = read_cached(cached)
    if attributes is None:
        attributes = write_cached(cached, _auto_config(model_dir, config_bytes).to_dict())
    return HFConfig(**attributes)


def _auto_config(model_dir: Path, config_bytes: bytes):
    try:
        json.loads(config_bytes)   # transformers would say only that it is not valid JSON, not where
    except ValueError as e:
        raise CorruptModelError(f"{model_dir / 'config.json'} is not valid JSON: {e}") from None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (ValueError, KeyError) as e:
        raise UnsupportedModelError(f"cannot read the config in {model_dir}: {first_line(e)}") from None


def eos_token_ids(model_dir: Path, hf_config) -> set[int]:
    """Generation stops at any of the ids the model's generation config, config or tokenizer name."""
    ids: set[int] = set()
    sources = [getattr(hf_config, "eos_token_id", None), tokenizer_eos_id(model_dir)]
    generation_config = model_dir / "generation_config.json"
    if generation_config.is_file():
        try:
            sources.append(json.loads(generation_config.read_text()).get("eos_token_id"))
        except json.JSONDecodeError as e:
            raise CorruptModelError(f"{generation_config} is not valid JSON: {e}") from None
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


@dataclass
class ModelFiles:
    """What a model name resolves to, read and checked before any weights are loaded."""
    model_dir: Path
    hf_config: object
    eos_token_ids: set[int]
    pooling: PoolingConfig | None = None   # set for an embedding model (a sentence-transformers directory)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """Read on first use: the engine process needs only eos_token_ids (loader.tokenizer_facts)."""
        from localllm.loader.tokenizer import Tokenizer

        return Tokenizer.from_dir(self.model_dir)


def open_model(name: str | None, keep_gguf_blocks: bool = False) -> ModelFiles:
    """keep_gguf_blocks: a GGUF's matrices stay quantized blocks (engine.core.keeps_gguf_blocks decides)."""
    from localllm.loader.resolve import resolve_model

    model_dir = resolve_model(name, keep_gguf_blocks)
    hf_config = load_hf_config(model_dir)
    # an unsupported architecture fails before anything heavy is loaded
    hf_architecture(getattr(hf_config, "architectures", None), str(model_dir))
    return ModelFiles(model_dir, hf_config, eos_token_ids(model_dir, hf_config), read_pooling_config(model_dir))
