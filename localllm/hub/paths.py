"""Where localllm keeps what it downloads and derives: its data directory, huggingface_hub's cache of pulled
files, and the cache of GGUF models converted for the loader (rm frees it, the loader fills it). What is ours
is readable by the user only: logs, saved chats and the daemon's state can hold prompts and keys."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
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


def converted_dir(gguf_path: Path, keep_blocks: bool = False) -> Path:
    """Where the converted form of `gguf_path` is cached (it may not exist yet): keyed by the resolved file,
    its size and mtime, so a replaced file is converted anew. keep_blocks names the form whose matrices stay
    quantized blocks (loader.gguf), beside the dequantized one."""
    path = gguf_path.resolve()
    stat = path.stat()
    identity = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{CONVERTER_VERSION}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return data_dir() / "converted" / f"{path.stem}-{digest}{'-blocks' if keep_blocks else ''}"


def private_dir(path: Path) -> Path:
    """`path`, created with its missing parents as 0700. The data directory, when `path` is in it, is made 0700
    too if it is open to others (as versions before this one left it)."""
    missing = [path, *(p for p in path.parents if not p.exists())]
    for directory in sorted(missing, key=lambda p: len(p.parts)):   # mkdir(parents=True) would make them 0755
        directory.mkdir(mode=0o700, exist_ok=True)
    home = data_dir()
    if path == home or home in path.parents:
        with contextlib.suppress(OSError):   # not ours to change: leave it
            if home.stat().st_mode & 0o077:
                home.chmod(0o700)
    return path


def open_private(path: Path, mode: str = "ab", **kwargs):
    """`path` opened as open() would, created 0600 in a 0700 directory (and made 0600 if it was not)."""
    private_dir(path.parent)
    stream = open(path, mode, opener=lambda name, flags: os.open(name, flags, 0o600), **kwargs)
    os.fchmod(stream.fileno(), 0o600)
    return stream


def write_private_atomically(path: Path, text: str) -> None:
    """`path` (0600, in a 0700 directory) holds `text` whole or keeps what it held: written beside it, then
    renamed over it, so that a reader never sees half of it."""
    private_dir(path.parent)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)   # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def locked(lock_file: Path):
    """Holds an exclusive advisory lock on `lock_file` (created in a 0700 directory) for the block, so that
    processes sharing the data directory take turns. Windows has no advisory locks: there the block runs
    unguarded, and writers rely on their atomic renames alone."""
    private_dir(lock_file.parent)
    with open(lock_file, "w") as lock:
        try:
            import fcntl
        except ImportError:
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
