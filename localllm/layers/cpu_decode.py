"""A batch of pure decodes of a float32 Llama-style model in one call to the compiled kernels
(cpu_kernels/decode_step.c), instead of the module tree's ~300 calls and ~2,000 torch ops a step, which cost a
135M-parameter model more time than its weights do at batch 1.

It covers what localllm.models.llama computes when nothing is switched on: pre-norm decoder layers of attention
(rotary, paged KV, grouped heads, optional sliding window) and a SwiGLU MLP, with no biases and no q/k norms,
every matrix kept as blocks of one compiled format, one rank. attach_decode_step checks that a model is that (by
the very forward methods its modules run) and otherwise leaves it alone; steps with a prefill go through the
modules as before, which share the compiled kernels one layer at a time.
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from localllm.cpu_kernels import ops
from localllm.layers.cpu_parts import CompiledPart
from localllm.layers.parallel import tp_size

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
# the methods whose computation decode_step.c reproduces: (method name, its qualified name)
_METHODS = {"model": ("forward", "LlamaForCausalLM.forward"), "layer": ("forward", "LlamaDecoderLayer.forward"),
            "attention": ("attend", "LlamaAttention.attend"), "act": ("forward", "SiluAndMul.forward")}


class LayerStruct(ctypes.Structure):
    _fields_ = [("qkv", _P), ("o", _P), ("gate_up", _P), ("down", _P), ("input_norm", _P), ("post_norm", _P),
                ("k_cache", _P), ("v_cache", _P), ("qkv_fmt", _I), ("o_fmt", _I), ("gate_up_fmt", _I),
                ("down_fmt", _I), ("window", _I)]


class ModelStruct(ctypes.Structure):
    _fields_ = [("layers", _I), ("hidden", _I), ("heads", _I), ("kv_heads", _I), ("head_dim", _I), ("inter", _I),
                ("block_size", _I), ("embed_fmt", _I), ("kv_half", _I), ("eps", _F), ("scale", _F), ("embed", _P),
                ("final_norm", _P), ("cos", _P), ("sin", _P), ("layer", ctypes.POINTER(LayerStruct))]


def _runs(module: nn.Module, role: str) -> bool:
    method, qualname = _METHODS[role]
    return getattr(getattr(type(module), method, None), "__qualname__", "") == qualname


def _compiled(linear: nn.Module) -> CompiledPart | None:
    """The linear layer's one compiled part, when it has exactly that and no bias."""
    matmul = getattr(linear, "cpu_matmul", None)
    if matmul is None or getattr(linear, "bias", None) is not None or len(matmul.parts) != 1:
        return None
    part = matmul.parts[0][0]
    return part if isinstance(part, CompiledPart) else None


def _layer_struct(layer: nn.Module) -> LayerStruct | None:
    attn, mlp = layer.self_attn, layer.mlp
    parts = [_compiled(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)]
    norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
    if not (_runs(layer, "layer") and _runs(attn, "attention") and _runs(mlp.act, "act") and not attn.qk_norm
            and all(parts) and all(n.dtype == torch.float32 for n in norms)):
        return None
    fields = {name: p.blocks.data_ptr() for name, p in zip(("qkv", "o", "gate_up", "down"), parts)}
    fields.update({f"{name}_fmt": ops.FORMATS[p.fmt] for name, p in zip(("qkv", "o", "gate_up", "down"), parts)})
    return LayerStruct(input_norm=norms[0].data_ptr(), post_norm=norms[1].data_ptr(),
                       window=attn.attn.sliding_window or 0, **fields)


class DecodeStep:
    """The model's forward for steps of decodes only; other steps (and a model before its KV pool) run `forward`."""

    def __init__(self, model: nn.Module, lib, layers: list[LayerStruct], forward):
        cfg, first = model.config, model.model.layers[0].self_attn
        embed = model.model.embed_tokens
        self.lib, self.forward = lib, forward
        self.attentions = [layer.self_attn.attn for layer in model.model.layers]
        self.layers = (LayerStruct * len(layers))(*layers)
        self.keep = (model.rotary.cos.contiguous(), model.rotary.sin.contiguous())
        self.struct = ModelStruct(
            layers=len(layers), hidden=cfg.hidden_size, heads=first.num_heads, kv_heads=first.num_kv_heads,
            head_dim=first.head_dim, inter=model.model.layers[0].mlp.down_proj.in_per_rank,
            embed_fmt=ops.FORMATS[embed.layout.parts[0].fmt], eps=model.model.norm.eps, scale=first.attn.scale,
            embed=embed.weight.data_ptr(), final_norm=model.model.norm.weight.data_ptr(),
            cos=self.keep[0].data_ptr(), sin=self.keep[1].data_ptr(), layer=self.layers)
        self.caches_pointed_at = None

    def _caches(self) -> tuple:
        """What the struct's cache pointers depend on: a new pool may start where the old one did (an anonymous
        map of another size often does), so its first layer's address alone does not tell."""
        first, last = self.attentions[0], self.attentions[-1]
        return first.k_cache.data_ptr(), last.v_cache.data_ptr(), first.k_cache.shape, first.k_cache.dtype

    def _point_at_caches(self) -> None:
        for struct, attn in zip(self.layers, self.attentions):
            struct.k_cache, struct.v_cache = attn.k_cache.data_ptr(), attn.v_cache.data_ptr()
        self.struct.block_size = self.attentions[0].k_cache.shape[1]
        self.struct.kv_half = self.attentions[0].k_cache.dtype == torch.float16
        self.caches_pointed_at = self._caches()

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta) -> torch.Tensor:
        k_cache = self.attentions[0].k_cache
        tokens = input_ids.shape[0]
        if (meta.num_decodes != meta.num_seqs or meta.num_seqs != tokens or k_cache.dtype not in ops.KV_DTYPES
                or k_cache.dim() != 4 or input_ids.dtype != torch.int64):
            return self.forward(input_ids, positions, meta)
        if self._caches() != self.caches_pointed_at:
            self._point_at_caches()
        out = torch.empty(tokens, self.struct.hidden)
        tables = meta.block_tables
        self.lib.lq_decode_step(ctypes.byref(self.struct), input_ids.data_ptr(), positions.data_ptr(),
                                meta.slot_mapping.data_ptr(), tables.data_ptr(), tables.stride(0),
                                meta.context_lens.data_ptr(), tokens, out.data_ptr(), torch.get_num_threads())
        return out


def attach_decode_step(model: nn.Module, lib) -> bool:
    """Makes the model's decode-only steps one compiled call when it is the plain float32 Llama decoder with
    compiled matrices (the module docstring's list); returns whether it did."""
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lib is None or tp_size() != 1 or not _runs(model, "model") or embed is None:
        return False
    layout = getattr(embed, "layout", None)
    if layout is None or len(layout.parts) != 1 or layout.parts[0].fmt not in ops.FORMATS:
        return False
    if model.model.norm.weight.dtype != torch.float32 or model.rotary.cos.dtype != torch.float32:
        return False
    layers = [_layer_struct(layer) for layer in model.model.layers]
    if not all(layers):
        return False
    model.forward = DecodeStep(model, lib, layers, model.forward)
    return True
