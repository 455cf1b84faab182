"""The registry of pulled models: one JSON manifest under data_dir()/models, written atomically.

The files themselves live in huggingface_hub's cache (paths.hub_cache_dir()); an entry records which snapshot
files belong to the model, so that removing it frees exactly the blobs no other snapshot still links to."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from localllm.errors import InvalidModelNameError, ModelNotFoundError
from localllm.hub.paths import converted_dir, data_dir, hub_cache_dir, locked, private_dir

_MANIFEST_VERSION = 1


@dataclass
class ModelEntry:
    name: str                   # what the user types: an alias, a repo id, repo:QUANT, or a local model's name
    source: str                 # "hub" (safetensors repo), "gguf" (a .gguf of a repo), "local", "embedded"
    path: str                   # what the loader gets: the snapshot dir or the .gguf file
    size: int                   # bytes
    format: str                 # dominant safetensors dtype (BF16) or GGUF quantization (Q4_K_M)
    modified: str               # ISO 8601, UTC
    ref: str | None = None      # what was pulled from the Hub: "owner/name" or "owner/name:QUANT"
    repo: str | None = None     # Hub repo id
    revision: str | None = None  # commit hash the files come from
    snapshot: str | None = None  # huggingface_hub snapshot dir holding `files`
    files: list[str] = field(default_factory=list)  # repo-relative names under `snapshot`
    architecture: str | None = None

    @classmethod
    def from_dict(cls, value: dict) -> "ModelEntry":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


def store_dir() -> Path:
    return data_dir() / "models"


def entries() -> list[ModelEntry]:
    return sorted(_read().values(), key=lambda e: e.name.lower())


def find(name: str) -> ModelEntry | None:
    """The entry stored under `name` (case-insensitive); what else a name can mean is hub.reference's job."""
    key = name.strip().lower()
    return next((e for e in _read().values() if e.name.lower() == key), None)


def save(entry: ModelEntry) -> None:
    with _locked():
        models = _read()
        models[entry.name] = entry
        _write(models)


def add(entry: ModelEntry) -> None:
    """Registers a new name; one taken already (whatever its case) is refused, never overwritten."""
    with _locked():
        models = _read()
        if any(e.name.lower() == entry.name.lower() for e in models.values()):
            raise InvalidModelNameError(f"a model named '{entry.name}' exists already; remove it first "
                                        "('localllm rm') or pick another name")
        models[entry.name] = entry
        _write(models)


def remove(name: str) -> tuple[ModelEntry, int]:
    """Unregister a model and delete what only it uses: its snapshot links, the blobs nothing else links to,
    and the converted copy of a GGUF. Files of a local model are never touched. Returns (entry, bytes freed)."""
    with _locked():
        models = _read()
        entry = find(name)
        if entry is None:
            raise ModelNotFoundError(f"model '{name}' not found (see 'localllm list')")
        del models[entry.name]
        freed = 0
        others_paths = {Path(e.path).resolve() for e in models.values() if e.path}
        gguf = Path(entry.path)  # a model that is one file is a GGUF, converted once into a cached directory
        if gguf.is_file() and gguf.resolve() not in others_paths:
            converted = converted_dir(gguf)  # keyed by the resolved file: compute it before the blob goes
            if converted.is_dir():
                freed += _tree_size(converted)
                shutil.rmtree(converted, ignore_errors=True)
        if entry.source in ("hub", "gguf") and entry.snapshot:
            freed += _discard(Path(entry.snapshot), entry.files, models.values())
        _write(models)
    return entry, freed


def discard_files(snapshot: Path, files: list[str], force: bool = False) -> int:
    """Delete files of a huggingface_hub snapshot (a failed or refused pull), keeping those a registered model
    uses unless `force` (a corrupt file is useless to everyone). Returns the bytes freed."""
    with _locked():
        others = [] if force else list(_read().values())
        return _discard(Path(snapshot), files, others, force)


def _discard(snapshot: Path, files: list[str], others, force: bool = False) -> int:
    cache = hub_cache_dir().resolve()
    repo_folder = snapshot.parent.parent
    # never delete anything but a huggingface_hub repo folder directly inside the cache
    if repo_folder.resolve().parent != cache or not repo_folder.name.startswith("models--") \
            or snapshot.parent.name != "snapshots":
        return 0
    kept = {(Path(o.snapshot), f) for o in others if o.snapshot for f in o.files}
    freed = 0
    for name in files:
        link = snapshot / name
        if (snapshot, name) in kept or not _inside(link, snapshot):
            continue
        blob = link.resolve()
        if force and link.is_symlink() and blob.parent == (repo_folder / "blobs").resolve() and blob.is_file():
            freed += blob.stat().st_size
            blob.unlink()  # a corrupt blob must go even if another snapshot links to it
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
    _prune_empty_dirs(repo_folder / "snapshots")
    linked = {p.resolve() for p in (repo_folder / "snapshots").rglob("*") if p.is_symlink()}
    blobs = repo_folder / "blobs"
    downloading = False
    for blob in (blobs.iterdir() if blobs.is_dir() else []):
        if blob.name.endswith(".incomplete"):  # another process is downloading into this repo right now
            downloading = True
        elif blob.resolve() not in linked:
            freed += blob.stat().st_size
            blob.unlink()
    snapshots = repo_folder / "snapshots"
    if not downloading and not (snapshots.is_dir() and any(snapshots.iterdir())):
        shutil.rmtree(repo_folder, ignore_errors=True)  # refs and .no_exist of a repo with nothing left
    return freed


def _prune_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for path in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                       key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()  # only succeeds when empty


def _inside(path: Path, root: Path) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(root) + os.sep)


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _manifest() -> Path:
    return store_dir() / "manifest.json"


def _read() -> dict[str, ModelEntry]:
    try:
        data = json.loads(_manifest().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        from localllm.errors import CorruptModelError

        raise CorruptModelError(f"the model registry {_manifest()} is unreadable ({e}); "
                                "move it away and pull the models again") from None
    return {name: ModelEntry.from_dict(value) for name, value in data.get("models", {}).items()}


def _write(models: dict[str, ModelEntry]) -> None:
    directory = store_dir()
    private_dir(directory)
    data = {"version": _MANIFEST_VERSION, "models": {name: asdict(e) for name, e in sorted(models.items())}}
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _manifest())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _locked():
    """Serialises read-modify-write of the manifest between processes (two pulls at once)."""
    return locked(store_dir() / ".lock")
