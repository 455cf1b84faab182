"""Maps a model name given by a user to a Hugging Face-style directory the safetensors loader reads."""
from __future__ import annotations

from pathlib import Path

from localllm.hub.paths import converted_dir
from localllm.hub.reference import resolve_reference
from localllm.loader.gguf import convert_gguf


def resolve_model(name: str | None, keep_gguf_blocks: bool = False) -> Path:
    """The directory of what `name` names (hub.reference; None = the embedded model): a model directory as it
    is, a GGUF file converted once (its matrices dequantized, or kept as blocks: loader.gguf), then cached."""
    path = resolve_reference(name).local_files()
    return _converted(path, keep_gguf_blocks) if path.is_file() else path


def _converted(gguf_path: Path, keep_blocks: bool) -> Path:
    out_dir = converted_dir(gguf_path, keep_blocks)
    if not out_dir.is_dir():  # conversion publishes the directory whole, so existing means complete
        convert_gguf(gguf_path, out_dir, keep_blocks)
    return out_dir
