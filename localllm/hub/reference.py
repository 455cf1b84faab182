"""What a model name means, decided once: `resolve_reference` turns what a user (or a request) names into a
ModelReference, which run, pull, show, rm, chat, the daemon and the loader all act on.

A name is, in this order: an alias of the embedded model; a path (./x, /x, ~/x, x.gguf), which must exist; the
name of a pulled model; an existing relative path; an alias (aliases.py); a Hub repo id, owner/name, with an
optional quant tag for a GGUF repo (owner/name-GGUF:Q4_K_M). An alias or repo id that is already pulled under
another name (qwen3:0.6b pulled as Qwen/Qwen3-0.6B) carries that model's store entry."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from localllm.errors import InvalidModelNameError, ModelNotFoundError
from localllm.hub import store
from localllm.hub.aliases import alias_target
from localllm.hub.embedded import EMBEDDED_ALIAS, EMBEDDED_ALIASES, embedded_gguf_path, stored_gguf
from localllm.hub.model_info import GGUF_MAGIC

_MAX_NAME = 1024
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ModelReference:
    name: str                          # what it is (or would be) stored under; a pulled model's own name
    kind: str                          # where its files come from: "embedded", "local", "hub" or "gguf"
    repo: str | None = None            # Hub repo id (hub, gguf)
    quant: str | None = None           # GGUF quant tag (gguf); None = the repo's only .gguf, else Q4_K_M
    revision: str = "main"             # branch, tag or commit a pull fetches (hub, gguf)
    path: Path | None = None           # its file or directory here, when it has one already
    entry: store.ModelEntry | None = None   # the store's record, when it is pulled

    @property
    def ref(self) -> str | None:
        """What a pull records as fetched from the Hub: owner/name or owner/name:QUANT."""
        return f"{self.repo}:{self.quant}" if self.quant else self.repo

    def local_files(self) -> Path:
        """The model's file or directory on this machine (the embedded model is installed on first use)."""
        if self.entry is not None and not Path(self.entry.path).exists():
            raise ModelNotFoundError(f"model '{self.entry.name}' was pulled but its files are gone "
                                     f"({self.entry.path}); run 'localllm pull {self.entry.name}' again")
        if self.path is not None:
            return self.path
        if self.kind == "embedded":
            return embedded_gguf_path()
        raise ModelNotFoundError(f"model '{self.name}' is not pulled yet; get it with 'localllm pull {self.name}'")


def resolve_reference(name: str | None, revision: str = "main", *, paths: bool = True) -> ModelReference:
    """What `name` names (None: the embedded model). `paths=False` never reads a name as a path (what the
    daemon asks: a request may only name models the store or the aliases know). Raises ModelNotFoundError,
    InvalidModelNameError for a name that cannot be a model, with a one-line message."""
    if name is None:
        return _embedded()
    text = name.strip()
    if not text or len(text) > _MAX_NAME or "\0" in text or any(c.isspace() for c in text):
        raise InvalidModelNameError(f"invalid model name {name!r}")
    if text.lower() in EMBEDDED_ALIASES:
        return _embedded()
    if paths and _looks_like_path(text):
        return _local(text)
    entries = store.entries()
    entry = next((e for e in entries if e.name.lower() == text.lower()), None)
    if entry is not None:
        return _from_entry(entry, revision)
    if paths and _exists(text):
        return _local(text)
    target = alias_target(text)
    reference = _repo(target or text, revision, name=text.lower() if target else text)
    wanted = reference.ref.lower()
    entry = next((e for e in entries if e.ref and e.ref.lower() == wanted), None)
    if entry is None:
        return reference
    return ModelReference(reference.name, reference.kind, reference.repo, reference.quant, revision,
                          Path(entry.path), entry)


def pulled_entry(name: str) -> store.ModelEntry:
    """The store's entry of the pulled model `name` (or of the alias or repo id it was pulled as). Any other name is
    said in those terms, whatever else it might name: what rm and cp need."""
    try:
        entry = resolve_reference(name, paths=False).entry
    except ModelNotFoundError:
        entry = None
    if entry is None:
        raise ModelNotFoundError(f"no pulled model is named '{name}' (see 'localllm list')")
    return entry


def _embedded() -> ModelReference:
    entry = next((e for e in store.entries() if e.source == "embedded"), None)
    path = Path(entry.path) if entry is not None else stored_gguf()
    return ModelReference(EMBEDDED_ALIAS, "embedded", path=path, entry=entry)


def _from_entry(entry: store.ModelEntry, revision: str) -> ModelReference:
    repo, _, quant = (entry.ref or "").partition(":")
    kind = entry.source if entry.source in ("embedded", "local", "gguf") else "hub"
    return ModelReference(entry.name, kind, repo or None, quant or None, revision, Path(entry.path), entry)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(text) or text.lower().endswith(".gguf")


def _exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except (OSError, ValueError):   # e.g. "File name too long"
        return False


def _local(text: str) -> ModelReference:
    path = Path(text).expanduser()
    if not _exists(text):
        if path.is_absolute():
            raise ModelNotFoundError(f"'{text}' is an absolute path but no such file or directory exists; a local "
                                     "model must be an existing directory or .gguf file, a Hub repo id looks like "
                                     "owner/name")
        if ".." in text:
            raise InvalidModelNameError(f"invalid model name '{text}': '..' is not allowed in a model name")
        raise ModelNotFoundError(f"no such file or directory: '{text}'")
    path = path.resolve()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelNotFoundError(f"'{text}' is a directory without config.json, not a model")
    if path.is_file() and path.suffix.lower() != ".gguf" and not _has_gguf_magic(path):
        raise ModelNotFoundError(f"'{text}' is not a GGUF file")   # a damaged .gguf is the loader's to report
    return ModelReference(path.stem if path.is_file() else path.name, "local", path=path)


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as e:
        raise ModelNotFoundError(f"model '{path}' not found: cannot read it ({e.strerror or e})") from None


def _repo(text: str, revision: str, name: str) -> ModelReference:
    if ".." in text:
        raise InvalidModelNameError(f"invalid model name '{name}': '..' is not allowed in a model name")
    repo, _, tag = text.partition(":")
    if not _REPO_ID.fullmatch(repo) or "--" in repo or repo.endswith((".", "-")) \
            or (tag and not _TAG.fullmatch(tag)):
        raise InvalidModelNameError(
            f"model '{name}' not found: it is not an alias such as qwen3:0.6b (see 'localllm pull --help'), a "
            "pulled model (see 'localllm list'), a Hub repo id (owner/name, owner/name-GGUF:QUANT) or a path")
    return ModelReference(name, "gguf" if tag else "hub", repo, tag or None, revision)
