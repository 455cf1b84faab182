"""Turns a GGUF file into a Hugging Face model directory, so one loader serves both formats.

The directory holds config.json, generation_config.json, the tokenizer files and model.safetensors with every
tensor under its Hugging Face name: dequantized to float32, or, with keep_blocks, the matrices in a block format
the engine multiplies directly (localllm.kernels.quant_blocks_ref: Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) copied as
their raw blocks, uint8 [rows, row bytes], the others dequantized. The safetensors metadata then lists each kept
tensor's format under "block_formats" (JSON), and names the file's quantization (Q4_K_M, ...) under "quantization".
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from localllm.kernels.block_formats import GGUF_BLOCK_TYPES, row_bytes
from localllm.architectures import Architecture, gguf_architecture
from localllm.errors import CorruptModelError, ModelNotFoundError, UnsupportedModelError, first_line
from localllm.hub.paths import private_dir


_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_BLOCK_MODULES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# the safetensors metadata key listing the tensors kept as raw blocks, and their formats
BLOCK_FORMATS_KEY = "block_formats"
# Llama 3.x rope scaling reaches GGUF only as this per-frequency divisor tensor; config.json gets it back
_ROPE_FREQS = "rope_freqs.weight"


def convert_gguf(gguf_path: Path, out_dir: Path, keep_blocks: bool = False) -> None:
    """Write the Hugging Face form of `gguf_path` to `out_dir`, which must not exist yet (keep_blocks: see above).

    The directory appears whole or not at all: it is built next to `out_dir` and renamed into place.
    If another process publishes `out_dir` first, its copy is kept.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = _open(gguf_path)
    metadata = _scalar_metadata(reader)
    arch_name = metadata.get("general.architecture")
    if not isinstance(arch_name, str):
        raise CorruptModelError(f"{gguf_path} is not a usable GGUF model: it names no architecture")
    if metadata.get("split.count", 1) > 1:
        raise UnsupportedModelError(f"{gguf_path.name} is one part of a split GGUF; merge the parts first "
                                    "(llama-gguf-split --merge)")
    arch = gguf_architecture(arch_name, gguf_path.name)
    tensors = {t.name: t for t in reader.tensors}
    config = _hf_config(gguf_path, arch_name, arch, metadata, tensors)
    plan = _tensor_plan(gguf_path, arch, config, tensors, keep_blocks)

    private_dir(out_dir.parent)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    build_dir.chmod(0o755)  # mkdtemp's private 0o700 would follow the directory into place
    try:
        _write_json(build_dir / "config.json", config)
        _write_json(build_dir / "generation_config.json", _generation_config(metadata, config))
        _save_tokenizer(gguf_path, build_dir)
        _write_safetensors(build_dir / "model.safetensors", plan,
                           _safetensors_metadata(gguf_path, metadata, tensors, plan))
        _publish(build_dir, out_dir)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)  # a no-op once published


def _open(gguf_path: Path):
    from gguf import GGUFReader

    if not gguf_path.is_file():
        raise ModelNotFoundError(f"model file {gguf_path} not found")
    try:
        return GGUFReader(gguf_path)
    except OSError as e:
        raise ModelNotFoundError(f"cannot read model file {gguf_path}: {e.strerror or e}") from None
    except Exception as e:  # gguf/numpy report a damaged file with whatever error its bytes provoke
        raise CorruptModelError(
            f"{gguf_path} is not a readable GGUF file (truncated or corrupt: {first_line(e)})") from None


def _scalar_metadata(reader) -> dict[str, object]:
    """Numbers, booleans and strings; arrays (the vocabulary, merges) are left to the tokenizer builder."""
    from gguf import GGUFValueType

    values: dict[str, object] = {}
    for name, field in reader.fields.items():
        if not field.types or field.types[0] == GGUFValueType.ARRAY or not field.data:
            continue
        part = field.parts[field.data[0]]
        if field.types[0] == GGUFValueType.STRING:
            values[name] = bytes(part).decode("utf-8", errors="replace")
        elif isinstance(part[0], np.floating):
            # the shortest decimal of the stored float32, so config.json reads 1e-05 and not 9.99999974e-06
            values[name] = float(str(part[0]))
        else:
            values[name] = part[0].item()
    return values


def _hf_config(gguf_path: Path, arch_name: str, arch: Architecture, metadata: dict, tensors: dict) -> dict:
    def hparam(key: str, default=None):
        value = metadata.get(f"{arch_name}.{key}", default)
        if value is None:
            raise CorruptModelError(f"{gguf_path.name} lacks the GGUF metadata key {arch_name}.{key}")
        return value

    for required in ("token_embd.weight", "blk.0.attn_q.weight"):
        if required not in tensors:
            raise CorruptModelError(f"{gguf_path.name} lacks the tensor {required}")
    num_heads = int(hparam("attention.head_count"))
    # the q projection's row count is the ground truth; key_length is absent from many files
    head_dim = _hf_shape(tensors["blk.0.attn_q.weight"])[0] // num_heads
    rotary_dim = metadata.get(f"{arch_name}.rope.dimension_count", head_dim)
    if rotary_dim != head_dim:
        raise UnsupportedModelError(f"{gguf_path.name}: partial rotary embedding ({rotary_dim} of {head_dim} dims)")
    rope_theta = float(hparam("rope.freq_base", 10000.0))
    config = {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "hidden_size": int(hparam("embedding_length")),
        "intermediate_size": int(hparam("feed_forward_length")),
        "num_hidden_layers": int(hparam("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(hparam("attention.head_count_kv", num_heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(hparam("attention.layer_norm_rms_epsilon")),
        "rope_theta": rope_theta,
        "max_position_embeddings": int(hparam("context_length")),
        # the embedding's row count, since vocabularies are often padded past the token list
        "vocab_size": _hf_shape(tensors["token_embd.weight"])[0],
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
    }
    if arch.model_type in ("llama", "mistral", "qwen3"):
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    if arch.model_type == "llama":
        config["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    rope_scaling = _rope_scaling(gguf_path, arch_name, metadata, tensors, rope_theta, head_dim)
    if rope_scaling:
        config["rope_scaling"] = rope_scaling
    return config


def _rope_scaling(gguf_path: Path, arch_name: str, metadata: dict, tensors: dict,
                  rope_theta: float, head_dim: int) -> dict | None:
    if _ROPE_FREQS in tensors:
        return _llama3_rope_scaling(gguf_path, tensors[_ROPE_FREQS], rope_theta, head_dim)
    kind = metadata.get(f"{arch_name}.rope.scaling.type")
    factor = metadata.get(f"{arch_name}.rope.scaling.factor")
    if kind is None and metadata.get(f"{arch_name}.rope.scale_linear") is not None:
        kind, factor = "linear", metadata[f"{arch_name}.rope.scale_linear"]  # the key older files use
    if kind in (None, "none") or factor in (None, 0.0, 1.0):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        original = metadata.get(f"{arch_name}.rope.scaling.original_context_length")
        return {"rope_type": "yarn", "factor": float(factor),
                **({"original_max_position_embeddings": int(original)} if original else {})}
    raise UnsupportedModelError(f"{gguf_path.name}: rope scaling type {kind!r} is not supported")


def _llama3_rope_scaling(gguf_path: Path, rope_freqs, rope_theta: float, head_dim: int) -> dict:
    """Recover Llama 3 scaling parameters, accepted only if they reproduce the file's divisors exactly."""
    divisors = _dequantize(gguf_path, rope_freqs).reshape(-1)
    scaling = {"rope_type": "llama3", "factor": float(divisors.max()), "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    if divisors.shape != (head_dim // 2,) or not np.allclose(_llama3_divisors(rope_theta, head_dim, scaling),
                                                             divisors, rtol=1e-4):
        raise UnsupportedModelError(
            f"{gguf_path.name}: its rope_freqs tensor is not Llama 3 rope scaling with the usual parameters")
    return scaling


def _llama3_divisors(rope_theta: float, head_dim: int, scaling: dict) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf formula for the rope_freqs tensor."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    divisors = []
    for freq in 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            divisors.append(1.0)
        elif wavelen > old_len / low:
            divisors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors)


def _generation_config(metadata: dict, config: dict) -> dict:
    # llama.cpp stops on any end-of-generation token, not only eos; chat models often need eot
    stop_ids = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and token_id not in stop_ids:
            stop_ids.append(token_id)
    generation = {"bos_token_id": config["bos_token_id"],
                  "eos_token_id": stop_ids[0] if len(stop_ids) == 1 else stop_ids or None}
    if metadata.get("tokenizer.ggml.padding_token_id") is not None:
        generation["pad_token_id"] = metadata["tokenizer.ggml.padding_token_id"]
    return generation


def _reverse_qk_permutation(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's permute(): within each head, GGUF row 2*i+j holds the Hugging Face row j*half+i."""
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclasses.dataclass(frozen=True)
class _Planned:
    """One output tensor; loading is deferred to keep one in memory at a time."""
    name: str                       # Hugging Face name
    shape: tuple[int, ...]          # as stored: raw blocks are [rows, row bytes]
    dtype: str                      # safetensors dtype: F32, or U8 for raw blocks
    block_format: str | None
    load: Callable[[], np.ndarray]


def _tensor_plan(gguf_path: Path, arch: Architecture, config: dict, tensors: dict,
                 keep_blocks: bool) -> list[_Planned]:
    plan = []
    for name, tensor in tensors.items():
        if name == _ROPE_FREQS:
            continue
        hf_name, module = _hf_name(gguf_path, name)
        heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}.get(module)
        fmt = tensor.tensor_type.name if keep_blocks and len(tensor.shape) == 2 else None
        if fmt in GGUF_BLOCK_TYPES:
            planned = _Planned(hf_name, tuple(tensor.data.shape), "U8", fmt,
                               lambda tensor=tensor: _raw_blocks(gguf_path, tensor))
        else:
            planned = _Planned(hf_name, _hf_shape(tensor), "F32", None,
                               lambda tensor=tensor: _dequantize(gguf_path, tensor))
        if arch.gguf_permuted_qk and heads:   # whole rows move, so raw block rows permute like dense ones
            planned = dataclasses.replace(
                planned, load=lambda read=planned.load, heads=heads: _reverse_qk_permutation(read(), heads))
        plan.append(planned)
    return plan


def _hf_name(gguf_path: Path, name: str) -> tuple[str, str | None]:
    """The Hugging Face name of a GGUF tensor, and its block module (attn_q, ffn_up, ...) if it has one."""
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name], None
    match = _BLOCK_TENSOR.fullmatch(name)
    if match is None or match.group(2) not in _BLOCK_MODULES:
        raise UnsupportedModelError(f"{gguf_path.name}: tensor {name!r} has no Hugging Face counterpart")
    layer, module, kind = match.groups()
    return f"model.layers.{layer}.{_BLOCK_MODULES[module]}.{kind}", module


def _hf_shape(tensor) -> tuple[int, ...]:
    # GGUF lists dimensions fastest-varying first, the reverse of row-major order
    return tuple(int(d) for d in reversed(tensor.shape))


def _dequantize(gguf_path: Path, tensor) -> np.ndarray:
    from gguf.quants import dequantize

    try:
        weight = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise UnsupportedModelError(
            f"{gguf_path.name}: tensor {tensor.name} uses quantization {tensor.tensor_type.name}, "
            "which gguf cannot dequantize") from None
    except Exception as e:
        raise CorruptModelError(f"{gguf_path}: tensor {tensor.name} is damaged ({first_line(e)})") from None
    if weight.shape != _hf_shape(tensor):
        raise CorruptModelError(f"{gguf_path}: tensor {tensor.name} holds {weight.shape}, "
                                f"not its declared {_hf_shape(tensor)}")
    return np.ascontiguousarray(weight, dtype="<f4")


def _raw_blocks(gguf_path: Path, tensor) -> np.ndarray:
    raw = tensor.data
    rows, cols = _hf_shape(tensor)
    if raw.dtype != np.uint8 or raw.shape != (rows, row_bytes(tensor.tensor_type.name, cols)):
        raise CorruptModelError(f"{gguf_path}: tensor {tensor.name} holds {raw.dtype} {raw.shape}, not the "
                                f"{tensor.tensor_type.name} blocks of its declared {(rows, cols)}")
    return np.ascontiguousarray(raw)


def _safetensors_metadata(gguf_path: Path, metadata: dict, tensors: dict, plan: list[_Planned]) -> dict[str, str]:
    from localllm.hub.model_info import gguf_quantization

    types = [(name, tuple(int(d) for d in t.shape), int(t.tensor_type)) for name, t in tensors.items()]
    kept = {t.name: t.block_format for t in plan if t.block_format}
    return {"format": "pt", "source": gguf_path.name, "quantization": gguf_quantization(metadata, types),
            **({BLOCK_FORMATS_KEY: json.dumps(kept, sort_keys=True)} if kept else {})}


def _write_safetensors(path: Path, plan: list[_Planned], metadata: dict[str, str]) -> None:
    """Streams tensors to disk one by one; safetensors' own writers need the whole model in memory."""
    header, offset = {}, 0
    for t in plan:
        size = (4 if t.dtype == "F32" else 1) * math.prod(t.shape)
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format wants the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for t in plan:
            f.write(memoryview(t.load()).cast("B"))


def _save_tokenizer(gguf_path: Path, build_dir: Path) -> None:
    from transformers import AutoTokenizer

    # Alone in a directory, so a stray tokenizer_config.json beside the GGUF cannot leak in.
    source_dir = build_dir / ".source"
    source_dir.mkdir()
    (source_dir / gguf_path.name).symlink_to(gguf_path.resolve())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_path.name, local_files_only=True)
    except Exception as e:
        raise UnsupportedModelError(f"{gguf_path.name}: cannot build its tokenizer ({first_line(e)})") from None
    finally:
        shutil.rmtree(source_dir)
    # chat template inside tokenizer_config.json, where every transformers version looks for it
    tokenizer.save_pretrained(build_dir, save_jinja_files=False)


def _publish(build_dir: Path, out_dir: Path) -> None:
    try:
        os.rename(build_dir, out_dir)
    except OSError:
        if not out_dir.is_dir():
            raise


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
