"""A Hugging Face model config as the models, the engine and the benchmarks read it, and values derived from it the
same way by each. Plain Python (no torch, no transformers), so any part may import it."""
from __future__ import annotations

from types import SimpleNamespace


class HFConfig(SimpleNamespace):
    """The attributes of a transformers config, from the dict its to_dict() gives (defaults filled in, rope settings
    normalized): the models only read attributes, and this needs no transformers import, which costs seconds at
    every engine start."""

    def to_dict(self) -> dict:
        return dict(vars(self))


def attention_head_dim(hf_config) -> int:
    """Width of one attention head: the config's head_dim where it sets one (Qwen3 sets it independently of the
    hidden size), else hidden_size split evenly over the query heads."""
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
