"""What every answer of the daemon must look like: no 5xx, and errors in OpenAI's shape (Ollama's on the Ollama
API's routes)."""
from __future__ import annotations

import json

from localllm.server.errors import OLLAMA_PATHS


def error_shape_problem(status: int, body: bytes, path: str | None = None) -> str | None:
    """None when an error response is {"error": {"message": str, "type": str, "code": ..., ...}} (on a route of
    the Ollama API at `path`, {"error": str}), else why not."""
    try:
        value = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"
    error = value.get("error") if isinstance(value, dict) else None
    if path in OLLAMA_PATHS:
        return None if isinstance(error, str) and error else f"no 'error' string: {body[:80]!r}"
    if not isinstance(error, dict):
        return f"no 'error' object: {body[:80]!r}"
    if not (isinstance(error.get("message"), str) and error["message"]
            and isinstance(error.get("type"), str) and "code" in error):
        return f"'error' lacks message/type/code: {body[:120]!r}"
    return None


def stream_error(body: bytes) -> str | None:
    """The code of the first error event of a server-sent-event stream, if any."""
    for line in body.splitlines():
        if line.startswith(b"data: {") and b'"error"' in line:
            try:
                error = json.loads(line[len(b"data: "):]).get("error")
            except ValueError:
                return "malformed error event"
            if isinstance(error, dict):
                return str(error.get("code") or error.get("type"))
    return None


def ndjson_error(body: bytes) -> str | None:
    """The message of the first error line of a newline-delimited JSON stream (the Ollama API's), if any."""
    for line in body.splitlines():
        if line.startswith(b"{") and b'"error"' in line:
            try:
                error = json.loads(line).get("error")
            except ValueError:
                return "malformed error line"
            if error:
                return str(error)
    return None
