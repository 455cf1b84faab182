"""Llama decoder, also the base of the Mistral, Qwen2 and Qwen3 files (they differ in a few switches)."""
from __future__ import annotations

import torch
from torch import nn

from localllm.hf_config import attention_head_dim
from localllm.layers.activation import SiluAndMul
from localllm.layers.attention import Attention, AttentionMetadata
from localllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from localllm.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear, add_projection,
                                    gated_mlp, normed_projection)
from localllm.layers.norm import RMSNorm
from localllm.layers.rotary import RotaryEmbedding, rope_parameters


class LlamaAttention(nn.Module):
    qk_norm = False

    @staticmethod
    def biases(cfg) -> tuple[bool, bool]:
        """(q/k/v bias, o bias)"""
        bias = getattr(cfg, "attention_bias", False)
        return bias, bias

    def __init__(self, cfg, sliding_window: int | None):
        super().__init__()
        head_dim = attention_head_dim(cfg)
        qkv_bias, o_bias = self.biases(cfg)
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, head_dim, cfg.num_attention_heads,
                                          cfg.num_key_value_heads, bias=qkv_bias)
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * head_dim, cfg.hidden_size, bias=o_bias)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = head_dim
        if self.qk_norm:
            self.q_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
        self.attn = Attention(self.num_heads, self.num_kv_heads, head_dim, head_dim ** -0.5, sliding_window)

    def attend(self, rope, qkv: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """The attention of this step's q/k/v projections [T, (H + 2 Hkv) D] -> [T, H D], the o_proj's input."""
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        out = self.attn(rope, q, k, v, meta, (self.q_norm, self.k_norm) if self.qk_norm else None)
        return out.flatten(1)


class LlamaMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        bias = getattr(cfg, "mlp_bias", False)
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [cfg.intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=bias)
        self.act = SiluAndMul()


class LlamaDecoderLayer(nn.Module):
    attention_class = LlamaAttention

    def __init__(self, cfg, sliding_window: int | None):
        super().__init__()
        self.self_attn = self.attention_class(cfg, sliding_window)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, rope, hidden, residual, meta):
        """(hidden, residual) -> (hidden, residual): hidden is the block output not yet added to the residual stream,
        None where a fused projection added it in place (linear.add_projection)."""
        attn, mlp = self.self_attn, self.mlp
        qkv, residual = normed_projection(attn.qkv_proj, self.input_layernorm, hidden, residual)
        hidden = add_projection(attn.o_proj, attn.attend(rope, qkv, meta), residual)
        return gated_mlp(mlp.gate_up_proj, mlp.down_proj, mlp.act, self.post_attention_layernorm, hidden, residual)


class LlamaForCausalLM(nn.Module):
    decoder_layer_class = LlamaDecoderLayer
    # HF checkpoint names folded into our merged projections: name -> (our name, shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        head_dim = attention_head_dim(cfg)
        self.rotary = RotaryEmbedding(head_dim, cfg.max_position_embeddings, rope_parameters(cfg))
        self.model = nn.Module()
        self.model.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(
            self.decoder_layer_class(cfg, self.sliding_window(cfg, i)) for i in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)
        if getattr(cfg, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def sliding_window(cfg, layer: int) -> int | None:
        layer_types = getattr(cfg, "layer_types", None)
        if layer_types is not None:
            return cfg.sliding_window if layer_types[layer] == "sliding_attention" else None
        return None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.model.embed_tokens(input_ids)
        rope = self.rotary.for_step(positions)
        residual = None
        for layer in self.model.layers:
            hidden, residual = layer(rope, hidden, residual, meta)
        return self.model.norm(residual) if hidden is None else self.model.norm(hidden, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

