"""A stand-in for the Hugging Face Hub on 127.0.0.1, answering the routes huggingface_hub downloads through:

- GET  /api/models/{owner}/{name}[/revision/{rev}]   model info; with ?blobs=True each sibling has size, blobId
                                                      and, for LFS files, lfs {sha256, size, pointerSize}
- HEAD /{owner}/{name}/resolve/{rev}/{file}           ETag (sha256 for LFS files, git blob id otherwise),
  GET                                                 X-Repo-Commit, Content-Length, Range -> 206 + Content-Range

Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) as the Hub's do; huggingface_hub maps
them to its exception types. Faults to inject: `drop_once` (the first GET of a file sends half of it and closes
the connection), `corrupt` (the bytes served differ from what the listing's sha256 describes) and `before_body`
(called with (repo_id, filename) before a file's bytes are sent, e.g. to fill the disk mid-pull)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from local_server import LocalServer

_LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".onnx")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub(LocalServer):
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.drop_once: set[tuple[str, str]] = set()
        self.corrupt: set[tuple[str, str]] = set()
        self.before_body = None
        super().__init__(_Handler)

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        self.repos[repo_id] = dict(files)
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        self.commits[repo_id] = digest.hexdigest()
        return self.commits[repo_id]

    def add_dir(self, repo_id: str, directory: Path, extra: dict[str, bytes] | None = None) -> str:
        files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
                 if p.is_file()}
        return self.add_repo(repo_id, {**files, **(extra or {})})

    def fetched(self, repo_id: str, filename: str, method: str | None = None) -> list[str | None]:
        """Range headers of the requests (of `method`, else GET and HEAD) made for one file."""
        path = f"/{repo_id}/resolve/"
        return [rng for m, p, rng in self.requests
                if p.startswith(path) and p.endswith("/" + filename) and (method is None or m == method)]


def _is_lfs(name: str) -> bool:
    return name.endswith(_LFS_SUFFIXES)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, head: bool) -> None:
        hub: FakeHub = self.server.owner
        path = unquote(urlsplit(self.path).path)
        hub.requests.append((self.command, path, self.headers.get("Range")))
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?", path)
        if match:
            return self._model_info(hub, match.group(1), match.group(2) or "main")
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            return self._resolve(hub, *match.groups(), head=head)
        self._reply(404, {"error": "no such route"})

    def _check(self, hub: FakeHub, repo_id: str, revision: str) -> bool:
        if repo_id not in hub.repos:
            self._reply(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return False
        if revision not in ("main", hub.commits[repo_id]):
            self._reply(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
            return False
        return True

    def _model_info(self, hub: FakeHub, repo_id: str, revision: str) -> None:
        if not self._check(hub, repo_id, revision):
            return
        siblings = []
        for name, data in sorted(hub.repos[repo_id].items()):
            sibling = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if _is_lfs(name):
                sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(sibling)
        self._reply(200, {"id": repo_id, "modelId": repo_id, "sha": hub.commits[repo_id], "private": False,
                          "lastModified": "2026-01-01T00:00:00.000Z", "siblings": siblings})

    def _resolve(self, hub: FakeHub, repo_id: str, revision: str, filename: str, head: bool) -> None:
        if not self._check(hub, repo_id, revision):
            return
        files = hub.repos[repo_id]
        commit = {"X-Repo-Commit": hub.commits[repo_id]}
        if filename not in files:
            self._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", **commit})
            return
        data = files[filename]
        etag = hashlib.sha256(data).hexdigest() if _is_lfs(filename) else git_blob_id(data)
        if (repo_id, filename) in hub.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]  # same size, other bytes
        headers = {**commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        start, end, status = 0, len(data) - 1, 200
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if ranged and not head:
            start = int(ranged.group(1))
            end = min(int(ranged.group(2)), end) if ranged.group(2) else end
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        if hub.before_body is not None:
            hub.before_body(repo_id, filename)
        if status == 200 and (repo_id, filename) in hub.drop_once:
            hub.drop_once.discard((repo_id, filename))
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection dies mid-file
            self.close_connection = True
            return
        self.wfile.write(body)

    def _reply(self, status: int, value: dict, headers: dict | None = None) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        for key, val in {**(headers or {}), "Content-Type": "application/json",
                         "Content-Length": str(len(body))}.items():
            self.send_header(key, val)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# --- pytest fixtures and small models shared by test_hub_pull.py and test_cli_models.py ---

import pytest  # noqa: E402

_built: dict[str, Path] = {}


def tiny_model_dir(tmp_path_factory, arch: str = "qwen3") -> Path:
    """One tiny random-weight model per session, whichever test module asks first."""
    if arch not in _built:
        from tiny_models import build_model_dir

        _built[arch] = build_model_dir(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
    return _built[arch]




@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub, reached through HF_ENDPOINT, and an empty localllm home (store and HF cache) per test. None
    of the user's Hugging Face settings (HF_HUB_OFFLINE, HF_HOME, a token...) reaches the test."""
    from huggingface_hub import constants

    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    for variable in [v for v in os.environ if v.startswith(("HF_", "HUGGINGFACE_"))] + ["TRANSFORMERS_OFFLINE"]:
        monkeypatch.delenv(variable, raising=False)
    fake = FakeHub()
    # localllm reads HF_ENDPOINT when it pulls; huggingface_hub read it and HF_HUB_OFFLINE once at import into
    # constants (its own telemetry and URL template use those), so both are set for the fake
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    yield fake
    fake.close()
