"""A model's config as transformers reads it (AutoConfig: defaults filled in, rope settings normalized, derived
fields such as layer_types set), kept as JSON in the data directory after the first read: later engine starts read
it without importing transformers, which takes 1.5-3 s of each start on a small CPU. An entry is keyed by the bytes
of config.json and by the installed transformers (its package file's path, size and modification time), so an
edited config or another transformers reads the config anew. The engine keeps the little it needs of a tokenizer
the same way (loader.tokenizer_facts)."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
from pathlib import Path

from localllm.hub.paths import data_dir, write_private_atomically


def cache_path(config_bytes: bytes) -> Path:
    """Where the attributes read from these config.json bytes by the installed transformers are kept."""
    return entry_path("configs", "transformers", config_bytes)


def entry_path(folder: str, package: str, content: bytes) -> Path:
    """Where what the installed `package` read from `content` is kept, in `folder` of the data directory."""
    spec = importlib.util.find_spec(package)   # finds the package without importing it
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    stat = origin.stat() if origin is not None else None
    identity = f"{origin}\0{stat.st_size if stat else 0}\0{stat.st_mtime_ns if stat else 0}\0".encode()
    return data_dir() / folder / f"{hashlib.sha256(identity + content).hexdigest()[:32]}.json"


def read_cached(path: Path) -> dict | None:
    """The cached attributes, or None when there are none (or the entry is unreadable: it is then read anew)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_cached(path: Path, attributes: dict) -> dict:
    """Returns the attributes as a later read from the cache gives them (JSON keys are strings, id2label's ids
    too), so that the first start and the later ones see the same. A config whose values are not JSON, or a data
    directory that cannot be written, is simply not cached."""
    try:
        text = json.dumps(attributes)
    except (TypeError, ValueError):
        return attributes
    with contextlib.suppress(OSError):
        write_private_atomically(path, text)
    return json.loads(text)
