"""Every request body the daemon takes is JSON, whatever its Content-Type says: `curl -d '{...}'` sends
application/x-www-form-urlencoded and many scripts send none, and Ollama's and OpenAI's servers read those
bodies as JSON. FastAPI parses a body as JSON only when it is labelled so, so the label is set here (a pure
ASGI middleware: it rewrites one header and touches nothing else)."""
from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

_JSON = b"application/json"


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == _JSON or media.endswith(b"+json")


class JSONBodyMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type" or _is_json(v)]
            if not any(k == b"content-type" for k, _ in headers):
                scope = {**scope, "headers": [*headers, (b"content-type", _JSON)]}
        await self.app(scope, receive, send)
