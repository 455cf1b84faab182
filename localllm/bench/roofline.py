"""Roofline arithmetic for `localllm bench`: the fastest a decode could go if each step only had to read every
weight once and each running sequence's keys and values once at the device's copy bandwidth, and the fastest a
prefill could go at the device's matmul rate. Plain arithmetic on integers, so it can be checked by hand."""
from __future__ import annotations

from dataclasses import dataclass

from localllm.hf_config import attention_head_dim


@dataclass(frozen=True)
class ModelShape:
    """What a decode step has to read, and what a prefill has to compute."""
    num_params: int
    weight_bytes_per_step: int   # every weight once, but an untied input embedding only gives one row per token
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype_bytes: int

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes


def _weights(model) -> tuple[int, int]:
    """(weights, bytes) of a model's parameters, each shared one once; a weight kept as quantized blocks
    (layers/quantized.py) counts its [rows, cols] weights and its blocks' bytes."""
    seen: set[int] = set()
    count = nbytes = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            layout = getattr(module, "layout", None) if name == "weight" else None
            count += layout.rows * layout.cols if layout is not None else param.numel()
            nbytes += param.numel() * param.element_size()
    return count, nbytes


def model_shape(model, hf_config, kv_dtype_bytes: int, tp: int = 1) -> ModelShape:
    """The shape of a built model, ours or transformers', its weights as stored (quantized blocks take their real
    bytes): a tied embedding / LM head counts once, as a step reads it once (as the LM head); an untied input
    embedding is left out of the bytes, since a step gathers a single row of it per sequence (for Llama-3.1-8B in
    bf16 that is 1 GB of its 16 GB). With tensor parallelism `model` is one rank's shard, so the shape is one
    GPU's, and the roofline that GPU's (all run in parallel)."""
    num_params, param_bytes = _weights(model)
    if not getattr(hf_config, "tie_word_embeddings", False):   # this rank's slice of the vocabulary
        embedding = model.model.embed_tokens.weight
        param_bytes -= embedding.numel() * embedding.element_size()
    head_dim = attention_head_dim(hf_config)
    return ModelShape(num_params=num_params, weight_bytes_per_step=param_bytes,
                      num_layers=hf_config.num_hidden_layers, num_kv_heads=max(1, hf_config.num_key_value_heads // tp),
                      head_dim=head_dim, kv_dtype_bytes=kv_dtype_bytes)


@dataclass(frozen=True)
class Roofline:
    bytes_read: int
    output_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def decode_roofline(shape: ModelShape, bandwidth_gb_s: float, prompt_lens: list[int],
                    max_tokens: list[int]) -> Roofline:
    """Every sequence decodes from its prompt at once, one token per step: step t (from 1) runs the sequences
    with max_tokens >= t, reads the weights once and, for each running sequence, the KV of its prompt_len + t
    tokens. Prefill and scheduling are left out, so this is a bound, not a prediction."""
    steps = max(max_tokens)
    # sum over t = 1..m of (p + t) = m * p + m * (m + 1) / 2 context tokens read by one sequence
    context_tokens = sum(m * p + m * (m + 1) // 2 for p, m in zip(prompt_lens, max_tokens))
    bytes_read = steps * shape.weight_bytes_per_step + context_tokens * shape.kv_bytes_per_token
    return Roofline(bytes_read, sum(max_tokens), bytes_read / (bandwidth_gb_s * 1e9))


def prefill_floor_s(shape: ModelShape, prompt_tokens: int, matmul_tflop_s: float) -> float:
    """2 FLOPs per parameter per prompt token at the measured matmul rate; attention's own FLOPs are left out."""
    return 2 * shape.num_params * prompt_tokens / (matmul_tflop_s * 1e12)


def percent(reached: float, bound: float) -> float:
    return 100.0 * reached / bound
