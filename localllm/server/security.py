"""The daemon's door: Host-header check against DNS rebinding, a CORS allow-list for browsers, and the
optional API key (every route but /health). A pure ASGI middleware, so streams pass through untouched."""
from __future__ import annotations

import hmac
import ipaddress

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localllm.server.errors import APIError
from localllm.server.settings import ServerSettings, is_loopback

OPEN_PATHS = {"/health"}
_CORS_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"


def host_name(host_header: str) -> str:
    """The name or address of a Host header, without port or IPv6 brackets, lower-case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, settings: ServerSettings):
        self.app = app
        self.api_key = settings.api_key
        self.any_host = "*" in settings.allowed_hosts
        self.hosts = {host_name(h) for h in settings.allowed_hosts if h != "*"}
        if not _is_wildcard_address(settings.host):
            self.hosts.add(host_name(settings.host))
        self.any_origin = "*" in settings.cors_origins
        self.origins = {o.strip().rstrip("/").lower() for o in settings.cors_origins if o != "*"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host")
        if host is not None and not self._host_allowed(host):
            return await _reject(scope, receive, send, 403, f"Host '{host}' is not allowed; the daemon answers "
                                 "loopback names and those given with --allow-host.", "host_not_allowed")
        origin = headers.get("origin")
        if origin is not None:
            if not self._origin_allowed(origin):
                return await _reject(scope, receive, send, 403, f"Cross-origin requests from '{origin}' are not "
                                     "allowed; add the origin with --cors-origin.", "origin_not_allowed")
            send = _with_cors(send, origin)
            if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                return await _preflight(send, headers)
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._key_ok(headers):
            return await _reject(scope, receive, send, 401, "Incorrect or missing API key: send 'Authorization: "
                                 "Bearer <key>'.", "invalid_api_key", {"www-authenticate": "Bearer"},
                                 "invalid_request_error")
        await self.app(scope, receive, send)

    def _host_allowed(self, host: str) -> bool:
        name = host_name(host)
        return self.any_host or is_loopback(name) or name in self.hosts

    def _origin_allowed(self, origin: str) -> bool:
        return self.any_origin or origin.strip().rstrip("/").lower() in self.origins

    def _key_ok(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def _is_wildcard_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _with_cors(send: Send, origin: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            message = {**message, "headers": headers}
        await send(message)
    return wrapped


async def _preflight(send: Send, headers: Headers) -> None:
    allow_headers = headers.get("access-control-request-headers", "authorization, content-type")
    await send({"type": "http.response.start", "status": 204, "headers": [
        (b"access-control-allow-methods", _CORS_METHODS.encode()),
        (b"access-control-allow-headers", allow_headers.encode("latin-1")),
        (b"access-control-max-age", b"600")]})
    await send({"type": "http.response.body", "body": b""})


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str,
                  headers: dict[str, str] | None = None, type_: str | None = None) -> None:
    error = APIError(status, message, code=code, type=type_, headers=headers)
    await error.response(scope["path"])(scope, receive, send)
