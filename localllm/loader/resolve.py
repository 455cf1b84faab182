"""Maps a model name given by a user to a Hugging Face-style directory the safetensors loader reads."""
from __future__ import annotations

import hashlib
from pathlib import Path

from localllm.errors import ModelNotFoundError
from localllm.hub.embedded import EMBEDDED_ALIAS, EMBEDDED_ALIASES, embedded_gguf_path
from localllm.hub.paths import data_dir
from localllm.loader.gguf import convert_gguf

# Part of every cache key: raising it makes old conversions invisible after the converter changes.
_CONVERTER_VERSION = 1
_GGUF_MAGIC = b"GGUF"


def resolve_model(name: str | None) -> Path:
    """None or an alias of the embedded model, a .gguf file (converted once, then cached), or a model directory."""
    if name is None or name.lower() in EMBEDDED_ALIASES:
        return _converted(embedded_gguf_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise ModelNotFoundError(f"model '{name}' not found: the directory has no config.json")
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _has_gguf_magic(path):
            return _converted(path)
        raise ModelNotFoundError(f"model '{name}' not found: the file is not a .gguf model")
    from localllm.hub.store import local_path_of  # models fetched with `localllm pull`

    pulled = local_path_of(name)
    if pulled is not None:
        return resolve_model(str(pulled))
    raise ModelNotFoundError(
        f"model '{name}' not found: it is neither a pulled model (see 'localllm list', 'localllm pull'), the alias "
        f"{EMBEDDED_ALIAS!r}, a .gguf file, nor a directory with config.json")


def converted_dir(gguf_path: Path) -> Path:
    """Where the converted form of `gguf_path` is cached (it may not exist yet)."""
    return data_dir() / "converted" / _cache_key(gguf_path)


def _converted(gguf_path: Path) -> Path:
    out_dir = converted_dir(gguf_path)
    if not out_dir.is_dir():  # conversion publishes the directory whole, so existing means complete
        convert_gguf(gguf_path, out_dir)
    return out_dir


def _cache_key(gguf_path: Path) -> str:
    path = gguf_path.resolve()
    stat = path.stat()
    identity = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{_CONVERTER_VERSION}"
    return f"{path.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == _GGUF_MAGIC
    except OSError as e:
        raise ModelNotFoundError(f"model '{path}' not found: cannot read it ({e.strerror or e})") from None
