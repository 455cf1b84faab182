"""Owns the model and the KV pool; turns a step's batch into logits of the sequences that sample."""
from __future__ import annotations

from pathlib import Path

import torch

from localllm.engine.batch import StepBatch
from localllm.layers.attention import Attention
from localllm.loader.safetensors import load_weights
from localllm.models import model_class


def kv_bytes_per_block(hf_config, block_size: int, dtype: torch.dtype) -> int:
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    per_token = 2 * hf_config.num_hidden_layers * hf_config.num_key_value_heads * head_dim
    return per_token * block_size * dtype.itemsize


class ModelRunner:
    def __init__(self, hf_config, model_dir: Path, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                self.model = model_class(hf_config)(hf_config)
        finally:
            torch.set_default_dtype(default_dtype)
        load_weights(self.model, model_dir)
        self.model.eval()
        self.kv_cache: torch.Tensor | None = None

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        first = layers[0]
        shape = (2, len(layers), num_blocks, block_size, first.num_kv_heads, first.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(layers):
            layer.k_cache = self.kv_cache[0, i]
            layer.v_cache = self.kv_cache[1, i]

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Returns float32 logits [len(batch.sampling_seqs), vocab]."""
        hidden = self.model(batch.input_ids, batch.positions, batch.attention)
        if not batch.sampling_seqs:
            return hidden.new_empty((0, 0), dtype=torch.float32)
        return self.model.compute_logits(hidden[batch.logits_indices]).float()
