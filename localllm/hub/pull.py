"""`localllm pull`: fetch a model with huggingface_hub (its cache, retries and resume, HF_TOKEN, HF_ENDPOINT),
refuse what cannot run here before any weights are downloaded, verify what arrived, and register it.

What can be pulled: an alias (aliases.py), a Hub repo id ("Qwen/Qwen3-0.6B": its safetensors weights, config,
generation config, tokenizer and chat template files, never pickles), a GGUF repo with a quant tag
("owner/repo-GGUF:Q4_K_M": the one .gguf file of that quantization), or an existing local directory or .gguf."""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from localllm import settings
from localllm.architectures import gguf_architecture, hf_architecture
from localllm.errors import CorruptModelError, ModelNotFoundError, PullError, UnsupportedModelError, first_line
from localllm.hub import store
from localllm.hub.model_info import GGUF_MAGIC, describe, read_gguf_metadata_prefix
from localllm.hub.paths import hub_cache_dir
from localllm.hub.progress import Reporter
from localllm.hub.reference import ModelReference, resolve_reference
from localllm.units import format_size


# Besides the weights, a safetensors model needs these (when the repo has them); never *.bin, *.pt, *.pth, pickles.
# An embedding model's sentence-transformers files (modules.json, the Pooling module's config) say how it pools.
_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
               "chat_template.jinja", "chat_template.json", "modules.json", "sentence_bert_config.json",
               "config_sentence_transformers.json")
_SIDE_PATTERNS = ("additional_chat_templates/*.jinja", "*_Pooling/config.json")
_INDEX = "model.safetensors.index.json"
_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_DEFAULT_QUANT = "Q4_K_M"  # what a GGUF repo gives when no tag is named and it holds several files, as in Ollama
_GGUF_PROBE_BYTES = 256 << 10  # general.architecture is among the first keys of a GGUF header
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


def pull(model: str, revision: str = "main", reporter: Reporter | None = None) -> store.ModelEntry:
    """Download (or find) what `model` names (hub.reference), verify it and record it in the store."""
    return pull_reference(resolve_reference(model, revision), reporter)


def pull_reference(ref: ModelReference, reporter: Reporter | None = None) -> store.ModelEntry:
    """Download (or find) the model `ref` stands for, verify it and record it in the store; returns its entry."""
    reporter = reporter or Reporter()
    if ref.kind == "embedded":
        from localllm.hub.embedded import embedded_gguf_path

        entry = _local_entry(ref, embedded_gguf_path(reporter), source="embedded")
    elif ref.kind == "local":
        reporter.status(f"registering the local model {ref.path}")
        entry = _local_entry(ref, ref.path, source="local")
    else:
        entry = _pull_from_hub(ref, reporter)
    previous = next((e for e in store.entries() if e.name == entry.name), None)
    reporter.status("writing manifest")
    store.save(entry)
    if previous is not None and previous.snapshot and previous.snapshot != entry.snapshot:
        reporter.status("removing the files of the previous revision")
        store.discard_files(Path(previous.snapshot), previous.files)  # keeps what another model still uses
    return entry


def _local_entry(ref: ModelReference, path: Path, source: str) -> store.ModelEntry:
    info = describe(path)
    if path.is_file():
        gguf_architecture(info["architecture"], path.name)
    else:
        hf_architecture(json.loads((path / "config.json").read_text()).get("architectures"), str(path))
    return store.ModelEntry(
        name=ref.name, source=source, path=str(path), size=sum(f["size"] for f in info["files"]),
        format=info["format"], modified=_now(), files=[f["name"] for f in info["files"]],
        architecture=info["architecture"])


def _pull_from_hub(ref: ModelReference, reporter: Reporter) -> store.ModelEntry:
    from huggingface_hub import HfApi

    revision = ref.revision
    reporter.status(f"pulling manifest of {ref.repo}")
    with _hub_errors(ref.repo, revision):
        info = HfApi(endpoint=endpoint()).model_info(ref.repo, revision=revision, files_metadata=True)
    commit = info.sha or ""
    if not _COMMIT.fullmatch(commit):
        raise PullError(f"{endpoint()} gave no usable commit hash for {ref.repo}@{revision}")
    _record_ref(ref.repo, revision, commit)
    siblings = {s.rfilename: s for s in info.siblings or []}
    ggufs = sorted(n for n in siblings if n.lower().endswith(".gguf"))
    has_safetensors = any(n.endswith(".safetensors") for n in siblings)
    if ref.kind == "gguf" or (ggufs and not has_safetensors):
        return _pull_gguf(ref, commit, siblings, ggufs, reporter)
    return _pull_safetensors(ref, commit, siblings, reporter)


def _pull_safetensors(ref: ModelReference, commit: str, siblings: dict, reporter: Reporter) -> store.ModelEntry:
    repo = ref.repo
    snapshot = snapshot_dir(repo, commit)
    if "config.json" not in siblings:
        raise UnsupportedModelError(f"{repo} has no config.json, so it is not a transformers model")
    config_path = _download(repo, commit, "config.json", siblings, reporter)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        store.discard_files(snapshot, ["config.json"], force=True)
        raise CorruptModelError(f"config.json of {repo} is not valid JSON ({e})") from None
    try:
        architecture = hf_architecture(config.get("architectures"), repo).hf_class
    except UnsupportedModelError:
        store.discard_files(snapshot, ["config.json"])  # nothing of a model we cannot run stays behind
        raise
    reporter.status(f"architecture {architecture}: supported")

    files = ["config.json"]
    if _INDEX in siblings:
        index_path = _download(repo, commit, _INDEX, siblings, reporter)
        try:
            weights = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CorruptModelError(f"{_INDEX} of {repo} is unreadable ({e})") from None
        files.append(_INDEX)
        missing = [w for w in weights if w not in siblings]
        if missing:
            raise CorruptModelError(f"{repo}: {_INDEX} lists {missing[0]}, which the repo does not have")
    else:
        weights = sorted(n for n in siblings if "/" not in n and n.endswith(".safetensors"))
        if "model.safetensors" in weights:  # some repos add a second copy in another layout (consolidated.*)
            weights = ["model.safetensors"]
    if not weights:
        pickles = [n for n in siblings if n.endswith(_PICKLES)]
        raise UnsupportedModelError(
            f"{repo} has no .safetensors weights" + (" (only PyTorch pickle files, which localllm never loads)"
                                                     if pickles else ""))
    files += weights
    files += [n for n in siblings if n in _SIDE_FILES and n not in files]
    files += sorted(n for n in siblings if any(fnmatch.fnmatch(n, p) for p in _SIDE_PATTERNS))
    for name in files:
        _check_relative(name, repo)

    _check_disk_space(repo, snapshot, files, siblings)
    _fetch(repo, commit, files, siblings, reporter)
    _verify_all(repo, snapshot, files, siblings, reporter)
    info = describe(snapshot)
    return store.ModelEntry(
        name=ref.name, source="hub", path=str(snapshot), size=sum(_size(siblings[f]) or 0 for f in files),
        format=info["format"], modified=_now(), ref=ref.ref, repo=repo, revision=commit, snapshot=str(snapshot),
        files=files, architecture=architecture)


def _pull_gguf(ref: ModelReference, commit: str, siblings: dict, ggufs: list[str],
               reporter: Reporter) -> store.ModelEntry:
    repo = ref.repo
    filename = pick_gguf(repo, ref.quant, ggufs)
    _check_relative(filename, repo)
    if _SPLIT_GGUF.search(filename):
        raise UnsupportedModelError(f"{repo}: {filename} is one part of a split GGUF, which localllm cannot load")
    reporter.status(f"reading the header of {filename}")
    metadata = _probe_gguf_header(repo, commit, filename)
    if "general.architecture" in metadata:  # else the header was too long to probe: checked after download
        gguf_architecture(metadata["general.architecture"], f"{repo}/{filename}")
        reporter.status(f"architecture {metadata['general.architecture']}: supported")

    snapshot = snapshot_dir(repo, commit)
    _check_disk_space(repo, snapshot, [filename], siblings)
    _fetch(repo, commit, [filename], siblings, reporter)
    _verify_all(repo, snapshot, [filename], siblings, reporter)
    path = snapshot / filename
    try:
        info = describe(path)
        gguf_architecture(info["architecture"], f"{repo}/{filename}")
    except (UnsupportedModelError, CorruptModelError):
        store.discard_files(snapshot, [filename])
        raise
    quant = info["format"] if info["format"] != "unknown" else (ref.quant or "unknown").upper()
    return store.ModelEntry(
        name=ref.name, source="gguf", path=str(path),
        size=path.stat().st_size, format=quant, modified=_now(), ref=f"{repo}:{ref.quant or gguf_tag(filename)}",
        repo=repo, revision=commit, snapshot=str(snapshot), files=[filename], architecture=info["architecture"])


def pick_gguf(repo: str, quant: str | None, ggufs: list[str]) -> str:
    """The .gguf file of `repo` whose name carries the tag `quant` (Q4_K_M, q8_0, ...); without a tag, the only
    file, else the Q4_K_M one."""
    candidates = [n for n in ggufs if "mmproj" not in n.lower()]
    if not candidates:
        raise ModelNotFoundError(f"{repo} has no .gguf files")
    tag = (quant or _DEFAULT_QUANT).lower()
    bounded = re.compile(rf"(^|[-._/]){re.escape(tag)}([-._/]|$)")
    matches = [n for n in candidates if bounded.search(n[:-len(".gguf")].lower())]
    if not matches:
        matches = [n for n in candidates if tag in n.lower()]
    if quant is None and len(candidates) == 1:
        return candidates[0]
    if len(matches) == 1:
        return matches[0]
    available = ", ".join(sorted({gguf_tag(n) for n in candidates}))
    if not matches:
        if quant is None:
            raise PullError(f"{repo} holds several GGUF files: name one as {repo}:TAG (tags: {available})")
        raise ModelNotFoundError(f"{repo} has no .gguf file tagged {quant} (tags: {available})")
    raise PullError(f"tag {quant or _DEFAULT_QUANT} matches several files of {repo}: {', '.join(matches)}; "
                    "give a more precise tag")


def gguf_tag(filename: str) -> str:
    """The quantization tag in a GGUF file name: Qwen3-0.6B-Q8_0.gguf -> Q8_0."""
    return re.split(r"[-./]", _SPLIT_GGUF.sub(".gguf", filename)[:-len(".gguf")])[-1]


def endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import)."""
    return settings.hf_endpoint()


def snapshot_dir(repo: str, commit: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache_dir() / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / commit


def _record_ref(repo: str, revision: str, commit: str) -> None:
    """refs/<revision> -> commit in huggingface_hub's cache, as its own downloads by branch name leave it, so that
    transformers and huggingface_hub find the files offline by branch name too (we download by commit)."""
    if revision == commit or not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", revision) or ".." in revision:
        return
    refs = snapshot_dir(repo, commit).parent.parent / "refs"
    (refs / revision).parent.mkdir(parents=True, exist_ok=True)
    (refs / revision).write_text(commit)


def _probe_gguf_header(repo: str, commit: str, filename: str) -> dict:
    """The GGUF metadata found in the first bytes of the remote file (one ranged request, not the weights)."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(repo, filename, revision=commit, endpoint=endpoint())
    headers = {**build_hf_headers(), "Range": f"bytes=0-{_GGUF_PROBE_BYTES - 1}", "Accept-Encoding": "identity"}
    session = get_session()
    if not hasattr(session, "stream"):  # huggingface_hub < 1.0 (requests): the header is checked after download
        return {}
    prefix = bytearray()
    with _hub_errors(repo, commit, filename):
        with session.stream("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
            hf_raise_for_status(r)
            for chunk in r.iter_bytes():
                prefix += chunk
                if len(prefix) >= _GGUF_PROBE_BYTES:  # a server that ignores Range: stop reading here
                    break
    if prefix[:4] != GGUF_MAGIC:
        raise CorruptModelError(f"{repo}/{filename} is not a GGUF file")
    return read_gguf_metadata_prefix(bytes(prefix[:_GGUF_PROBE_BYTES]))


def _download(repo: str, commit: str, filename: str, siblings: dict, reporter: Reporter) -> Path:
    from huggingface_hub import hf_hub_download

    with _hub_errors(repo, commit, filename):
        return Path(hf_hub_download(
            repo, filename, revision=commit, cache_dir=hub_cache_dir(), endpoint=endpoint(),
            tqdm_class=reporter.bar_class(filename, _size(siblings.get(filename)))))


def _fetch(repo: str, commit: str, files: list[str], siblings: dict, reporter: Reporter) -> None:
    snapshot = snapshot_dir(repo, commit)
    if all((snapshot / f).exists() for f in files):
        reporter.status("all files already downloaded")
    for filename in files:
        _download(repo, commit, filename, siblings, reporter)


def _check_disk_space(repo: str, snapshot: Path, files: list[str], siblings: dict) -> None:
    needed = sum(_size(siblings[f]) or 0 for f in files if not (snapshot / f).exists())
    where = hub_cache_dir()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if needed > free:
        raise PullError(f"not enough disk space to pull {repo}: it needs {format_size(needed)}, "
                        f"{format_size(free)} are free in {where}")


def _verify_all(repo: str, snapshot: Path, files: list[str], siblings: dict, reporter: Reporter) -> None:
    """Sizes against the listing, contents against the Hub's sha256 (LFS) or git blob id (small files).
    Files another pulled model already verified are only size-checked."""
    trusted = {f for e in store.entries() if e.snapshot == str(snapshot) for f in e.files}
    reporter.status("verifying sha256 digest")
    for filename in files:
        problem = _check_file(snapshot / filename, siblings[filename], hash_it=filename not in trusted)
        if problem:
            store.discard_files(snapshot, [filename], force=True)
            raise CorruptModelError(f"{filename} of {repo} is corrupt ({problem}); it was deleted, "
                                    "run the pull again to download it anew")


def _check_file(path: Path, sibling, hash_it: bool) -> str | None:
    size = path.stat().st_size
    expected = _size(sibling)
    if expected is not None and size != expected:
        return f"{size} bytes instead of {expected}"
    if not hash_it:
        return None
    if sibling.lfs is not None and sibling.lfs.sha256:
        digest = _digest(path, hashlib.sha256())
        if digest != sibling.lfs.sha256:
            return f"sha256 {digest[:12]}…, the Hub lists {sibling.lfs.sha256[:12]}…"
    elif sibling.blob_id:
        digest = _digest(path, hashlib.sha1(f"blob {size}\0".encode()))  # git's object id of the file
        if digest != sibling.blob_id:
            return f"git blob id {digest[:12]}…, the Hub lists {sibling.blob_id[:12]}…"
    return None


def _digest(path: Path, hasher) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _size(sibling) -> int | None:
    if sibling is None:
        return None
    return sibling.lfs.size if sibling.lfs is not None else sibling.size


def _check_relative(name: str, repo: str) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise PullError(f"{repo} lists a file with an unsafe name: {name!r}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _hub_errors(repo: str, revision: str, filename: str | None = None):
    """huggingface_hub's exceptions -> one-line errors of ours."""
    from huggingface_hub import errors as hf

    what = f"{repo}/{filename}" if filename else repo
    remote_missing = getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError)
    try:
        yield
    except hf.GatedRepoError:
        raise PullError(f"{repo} is gated: accept its terms at {endpoint()}/{repo}, then set HF_TOKEN to an "
                        "access token of that account") from None
    except hf.RepositoryNotFoundError:
        raise ModelNotFoundError(f"model '{repo}' not found on {endpoint()} (if it is private, set HF_TOKEN)") from None
    except hf.RevisionNotFoundError:
        raise ModelNotFoundError(f"revision '{revision}' of {repo} not found on {endpoint()}") from None
    except hf.OfflineModeIsEnabled:
        raise PullError("HF_HUB_OFFLINE is set, so nothing can be downloaded") from None
    except hf.LocalEntryNotFoundError as e:
        raise PullError(f"cannot download {what} from {endpoint()}: {_cause(e)}") from None
    except remote_missing:
        raise ModelNotFoundError(f"{what} not found on {endpoint()}") from None
    except hf.HfHubHTTPError as e:
        raise PullError(f"{endpoint()} refused {what}: {first_line(e)}") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise PullError(f"the disk filled up while downloading {what}") from None
        raise PullError(f"download of {what} failed ({first_line(e)}); run the pull again") from None
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise PullError(f"network error while pulling {what} from {endpoint()} "
                            f"({first_line(e)}); check the connection and HF_ENDPOINT, "
                            "then pull again") from None
        raise


def _cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return first_line(error)
