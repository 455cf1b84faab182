"""The real configs of the models `localllm bench --random-weights` builds (weights drawn at random on the
device, so nothing is downloaded; speed does not depend on the weights' values). With tensor parallelism each
rank draws only its own shard on its own GPU: a 70B model is never built whole, nor written anywhere."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


def random_weight_config(name: str):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    llama3_rope = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
    configs = {
        "qwen3-0.6b": lambda: Qwen3Config(
            vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"]),
        "llama-3.2-1b": lambda: LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
            rms_norm_eps=1e-5, rope_parameters={**llama3_rope, "factor": 32.0}, tie_word_embeddings=True,
            architectures=["LlamaForCausalLM"]),
        "llama-3.1-8b": lambda: LlamaConfig(
            vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
            rms_norm_eps=1e-5, rope_parameters={**llama3_rope, "factor": 8.0}, tie_word_embeddings=False,
            architectures=["LlamaForCausalLM"]),
        "qwen3-8b": lambda: Qwen3Config(
            vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False, architectures=["Qwen3ForCausalLM"]),
        "qwen2.5-32b": lambda: Qwen2Config(
            vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
            num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False,
            architectures=["Qwen2ForCausalLM"]),
        "llama-3.1-70b": lambda: LlamaConfig(
            vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
            num_attention_heads=64, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
            rms_norm_eps=1e-5, rope_parameters={**llama3_rope, "factor": 8.0}, tie_word_embeddings=False,
            architectures=["LlamaForCausalLM"]),
    }
    if name not in configs:
        raise ValueError(f"unknown --random-weights architecture {name!r}; choose from {', '.join(configs)}")
    return configs[name]()


@dataclass
class BenchModel:
    """What a bench run measures: random weights (model_dir None) or a resolved model directory."""
    name: str
    hf_config: object
    model_dir: Path | None
    eos_token_ids: set[int]
    tokenizer_dir: Path | None = None   # the tokenizer grammars are matched against; random weights have none
    source_file: Path | None = None     # the GGUF file model_dir was converted from


def with_a_tokenizer(bench_model: BenchModel, tokenizer_model: str | None = None) -> BenchModel:
    """Random weights get a tokenizer for grammars: `tokenizer_model`'s (a model name or directory; no weights are
    read), by default the embedded model's. Its tokens are allowed, the rest of the model's vocabulary never."""
    from localllm.loader.hf_dir import open_model

    if bench_model.tokenizer_dir is not None:
        return bench_model
    return replace(bench_model, tokenizer_dir=open_model(tokenizer_model).model_dir)


def open_bench_model(model: str | None, random_weights: str | None, keep_gguf_blocks: bool = False) -> BenchModel:
    """keep_gguf_blocks: a GGUF opened in the form whose matrices stay quantized blocks (loader.gguf)."""
    if random_weights:
        return BenchModel(random_weights, random_weight_config(random_weights), None, set())
    from localllm.hub.reference import resolve_reference
    from localllm.loader.hf_dir import open_model

    files = open_model(model, keep_gguf_blocks)
    source = resolve_reference(model).local_files()
    return BenchModel(model or "smollm2:135m", files.hf_config, files.model_dir, files.eos_token_ids,
                      files.model_dir, source if source.is_file() else None)
