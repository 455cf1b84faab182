"""What a model directory or GGUF file holds, read from headers only (no weights are loaded):
architecture, parameter count, context length, dtype or quantization, chat template, files.

A GGUF header is walked here rather than opened with gguf.GGUFReader (which the loader uses to convert weights):
the reader parses every element of the vocabulary and merges arrays into numpy parts, so on the embedded
SmolLM2-135M (49,152 tokens) it took 17-20 s where this walk, which seeks past arrays, took 0.3-0.4 s (both
measured on a loaded 2-core machine); `show`, `list`, the chat app's model picker and the pull probe (a 256 KiB
prefix of a remote file, which the reader cannot open) need only the scalar keys and the tensor shapes.
The names of types and quantizations still come from the gguf package."""
from __future__ import annotations

import io
import json
import math
import struct
from collections import Counter
from pathlib import Path
from typing import BinaryIO

from localllm.errors import CorruptModelError
from localllm.kernels.block_formats import GGUF_BLOCK_TYPES

GGUF_MAGIC = b"GGUF"
# GGUF scalar value types -> struct format (see the GGUF spec: 0..12, 8 = string, 9 = array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_SAFETENSORS_HEADER = 100 << 20


class Truncated(Exception):
    """The bytes ran out before the part of the header asked for."""


class _Reader:
    def __init__(self, f: BinaryIO):
        self.f = f

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise Truncated
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.unpack("<Q")).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if self.f.seekable():
            self.f.seek(n, io.SEEK_CUR)
        else:
            self.read(n)


def read_gguf_header(f: BinaryIO, with_tensors: bool = True) -> tuple[dict, list[tuple[str, tuple[int, ...], int]]]:
    """Scalar metadata (arrays are skipped, their lengths kept as `<key>.length`) and, if asked, tensor infos
    (name, shape as stored, ggml type). Raises Truncated if `f` ends early: what was read so far is lost, so a
    caller holding only a prefix should use read_gguf_metadata_prefix."""
    metadata: dict = {}
    tensors = _read_gguf(_Reader(f), metadata, with_tensors)
    return metadata, tensors


def read_gguf_metadata_prefix(prefix: bytes) -> dict:
    """The scalar metadata found in the first bytes of a GGUF file, as far as they go."""
    metadata: dict = {}
    try:
        _read_gguf(_Reader(io.BytesIO(prefix)), metadata, with_tensors=False)
    except Truncated:
        pass
    return metadata


def _read_gguf(r: _Reader, metadata: dict, with_tensors: bool) -> list:
    if r.read(4) != GGUF_MAGIC:
        raise CorruptModelError("not a GGUF file (bad magic bytes)")
    version = r.unpack("<I")
    if version < 2:
        raise CorruptModelError(f"GGUF version {version} is too old")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    for _ in range(n_kv):
        key = r.string()
        value_type = r.unpack("<I")
        if value_type == _ARRAY:
            item_type, count = r.unpack("<I"), r.unpack("<Q")
            metadata[f"{key}.length"] = count
            if item_type in _SCALARS:
                r.skip(count * struct.calcsize(_SCALARS[item_type]))
            elif item_type == _STRING:
                for _ in range(count):
                    r.skip(r.unpack("<Q"))
            else:
                raise CorruptModelError(f"GGUF key {key!r} is an array of unknown type {item_type}")
        elif value_type == _STRING:
            metadata[key] = r.string()
        elif value_type in _SCALARS:
            metadata[key] = r.unpack(_SCALARS[value_type])
        else:
            raise CorruptModelError(f"GGUF key {key!r} has unknown type {value_type}")
    tensors = []
    if with_tensors:
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            shape = tuple(r.unpack("<Q") for _ in range(n_dims))
            ggml_type = r.unpack("<I")
            r.unpack("<Q")  # data offset
            tensors.append((name, shape, ggml_type))
    return tensors


def gguf_quantization(metadata: dict, tensors: list) -> str:
    """Q4_K_M, Q8_0, F16, ...: from general.file_type, else the type holding the most parameters."""
    import gguf

    file_type = metadata.get("general.file_type")
    try:
        name = gguf.LlamaFileType(file_type).name
        if name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        pass
    weight = Counter()
    for _, shape, ggml_type in tensors:
        weight[ggml_type] += math.prod(shape)
    if not weight:
        return "unknown"
    try:
        return gguf.GGMLQuantizationType(weight.most_common(1)[0][0]).name
    except ValueError:
        return "unknown"


def _gguf_tensor_gpu_bytes(shape: tuple[int, ...], ggml_type: int) -> int:
    """A GGUF tensor's share of the weights on a GPU (quantization auto): the matrices in a format the engine
    keeps as blocks at their size in the file, the others in bf16."""
    import gguf

    count = math.prod(shape)
    try:
        kind = gguf.GGMLQuantizationType(ggml_type)
    except ValueError:
        return 2 * count
    if kind.name in GGUF_BLOCK_TYPES and len(shape) == 2:
        elems, nbytes = gguf.GGML_QUANT_SIZES[kind]
        return count // elems * nbytes
    return 2 * count


def safetensors_header(path: Path) -> dict:
    """Tensor name -> {dtype, shape, data_offsets}."""
    header = _safetensors_json(path)
    header.pop("__metadata__", None)
    return header


def safetensors_metadata(path: Path) -> dict:
    """The header's string metadata (a converted GGUF's: localllm.loader.gguf)."""
    metadata = _safetensors_json(path).get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def _safetensors_json(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_SAFETENSORS_HEADER:
                raise CorruptModelError(f"{path.name}: safetensors header of {length} bytes is not plausible")
            header = json.loads(f.read(length))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptModelError(f"{path.name} is not a readable safetensors file ({e})") from None
    return header


def describe(path: Path, with_metadata: bool = False) -> dict:
    """A summary of a model directory (config.json + *.safetensors) or of a .gguf file; `with_metadata` adds
    "metadata": the GGUF's scalar keys, or the directory's config.json."""
    path = Path(path)
    return _describe_gguf(path, with_metadata) if path.is_file() else _describe_dir(path, with_metadata)


def _describe_dir(model_dir: Path, with_metadata: bool = False) -> dict:
    config = _json(model_dir / "config.json")
    params, dtype_bytes, gpu_bytes, dense_bytes = 0, Counter(), 0, 0
    for file in sorted(model_dir.glob("*.safetensors")):
        for name, tensor in safetensors_header(file).items():
            count = math.prod(tensor["shape"])
            params += count
            start, end = tensor["data_offsets"]
            dtype_bytes[tensor["dtype"]] += end - start
            gpu_bytes += _dir_tensor_gpu_bytes(name, tensor, end - start)
            dense_bytes += _dir_tensor_dense_bytes(name, tensor)
    text_config = config.get("text_config") or {}
    context = config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
    tokenizer_config = _json(model_dir / "tokenizer_config.json") if (model_dir / "tokenizer_config.json").is_file() else {}
    chat_template = bool(tokenizer_config.get("chat_template")) or any(
        (model_dir / name).is_file() for name in ("chat_template.jinja", "chat_template.json"))
    architectures = config.get("architectures") or []
    summary = {
        "architecture": architectures[0] if architectures else config.get("model_type", "unknown"),
        "parameters": params,
        "context_length": context,
        "format": _dir_quantization(config) or (dtype_bytes.most_common(1)[0][0] if dtype_bytes else "unknown"),
        "gpu_weight_bytes": gpu_bytes,
        "dense_weight_bytes": dense_bytes,
        "chat_template": chat_template,
        "files": _files(p for p in sorted(model_dir.iterdir()) if p.is_file()),
    }
    return {**summary, "metadata": config} if with_metadata else summary


def _dir_quantization(config: dict) -> str | None:
    """AWQ-int4, GPTQ-int4, FP8, ... from config.json's quantization_config."""
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict):
        return None
    method = str(quantization.get("quant_method", "quantized"))
    if method == "fp8" or quantization.get("format") == "float-quantized":
        return "FP8"
    bits = quantization.get("bits", quantization.get("w_bit"))
    return f"{method.upper()}-int{bits}" if isinstance(bits, int) else method.upper()


def _dir_tensor_dense_bytes(name: str, tensor: dict) -> int:
    """A checkpoint tensor's share of the weights in bf16 (quantization none): AWQ/GPTQ's int32 qweight holds
    eight weights an element; scales, zero points and act-order indices are folded into the weights."""
    if name.endswith((".scales", ".weight_scale", ".weight_scale_inv", ".input_scale", ".qzeros", ".g_idx")):
        return 0
    return 2 * math.prod(tensor["shape"]) * (8 if name.endswith(".qweight") else 1)


def _dir_tensor_gpu_bytes(name: str, tensor: dict, nbytes: int) -> int:
    """A checkpoint tensor's share of the weights on a GPU (quantization auto): floats in bf16; AWQ/GPTQ int4
    layers repacked into blocks of 68 bytes per 128 weights (counted at their qweight, the rest of each layer
    with it), FP8 weights into blocks of 132 bytes per 128 (their scales with them)."""
    if tensor["dtype"] in ("F32", "F16", "BF16"):
        return 0 if name.endswith((".scales", ".weight_scale", ".weight_scale_inv", ".input_scale")) \
            else 2 * math.prod(tensor["shape"])
    if tensor["dtype"] == "F8_E4M3":
        return nbytes // 128 * 132   # fp8_e4m3_g128 blocks
    if name.endswith(".qweight"):
        return nbytes * 2 // 128 * 68   # two 4-bit weights a byte
    return 0 if name.endswith((".qzeros", ".g_idx")) else nbytes


def _describe_gguf(gguf_path: Path, with_metadata: bool = False) -> dict:
    try:
        with open(gguf_path, "rb", buffering=1 << 20) as f:
            metadata, tensors = read_gguf_header(f)
    except Truncated:
        raise CorruptModelError(f"{gguf_path.name}: the GGUF header is truncated") from None
    arch = metadata.get("general.architecture", "unknown")
    summary = {
        "architecture": arch,
        "parameters": sum(math.prod(shape) for _, shape, _ in tensors),
        "context_length": metadata.get(f"{arch}.context_length"),
        "format": gguf_quantization(metadata, tensors),
        "gpu_weight_bytes": sum(_gguf_tensor_gpu_bytes(shape, ggml_type) for _, shape, ggml_type in tensors),
        "dense_weight_bytes": 2 * sum(math.prod(shape) for _, shape, _ in tensors),
        "chat_template": bool(metadata.get("tokenizer.chat_template")),
        "files": _files([gguf_path]),
    }
    return {**summary, "metadata": metadata} if with_metadata else summary


# the GGUF matrices a tensor-parallel rank splits along their input features (the row-parallel layers)
_ROW_PARALLEL_GGUF = ("attn_output.weight", "ffn_down.weight")


def gguf_blocks_split_evenly(gguf_path: Path, degree: int) -> bool:
    """Whether `degree` ranks each get whole blocks of the input features of every row-parallel matrix that a GGUF
    keeps as blocks (attention output, FFN down), as the engine's weight plan demands of kept blocks."""
    import gguf

    with open(gguf_path, "rb", buffering=1 << 20) as f:
        _, tensors = read_gguf_header(f)
    for name, shape, ggml_type in tensors:
        if not name.endswith(_ROW_PARALLEL_GGUF) or len(shape) != 2:
            continue
        try:
            kind = gguf.GGMLQuantizationType(ggml_type)
        except ValueError:
            continue
        if kind.name in GGUF_BLOCK_TYPES and shape[0] % (degree * gguf.GGML_QUANT_SIZES[kind][0]):
            return False   # GGUF lists a matrix's input features first
    return True


def _files(paths) -> list[dict]:
    return [{"name": p.name, "size": p.stat().st_size} for p in paths]


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptModelError(f"{path.parent} has no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptModelError(f"{path} is not valid JSON: {e}") from None
    return value if isinstance(value, dict) else {}
