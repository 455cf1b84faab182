"""Values derived from a Hugging Face model config that the models, the engine and the benchmarks all need, derived
the same way by each. Plain Python (no torch), so any part may import it."""
from __future__ import annotations


def attention_head_dim(hf_config) -> int:
    """Width of one attention head: the config's head_dim where it sets one (Qwen3 sets it independently of the
    hidden size), else hidden_size split evenly over the query heads."""
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
