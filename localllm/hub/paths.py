"""Where localllm keeps what it downloads and derives: its data directory, huggingface_hub's cache of pulled
files, and the cache of GGUF models converted for the loader (rm frees it, the loader fills it)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from localllm import settings

# Part of every converted model's cache key: raising it makes old conversions invisible after the GGUF
# converter (localllm.loader.gguf) changes what it writes.
CONVERTER_VERSION = 1


def data_dir() -> Path:
    """$LOCALLLM_HOME if set, else the platform's per-user data directory."""
    override = settings.home()
    if override is not None:
        return override
    import platformdirs

    return Path(platformdirs.user_data_dir("localllm"))


def hub_cache_dir() -> Path:
    """huggingface_hub's cache: the user's own if they configured one, else ours, in the data directory."""
    return settings.hf_hub_cache() or data_dir() / "hub"


def converted_dir(gguf_path: Path) -> Path:
    """Where the converted form of `gguf_path` is cached (it may not exist yet): keyed by the resolved file,
    its size and mtime, so a replaced file is converted anew."""
    path = gguf_path.resolve()
    stat = path.stat()
    identity = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{CONVERTER_VERSION}"
    return data_dir() / "converted" / f"{path.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
