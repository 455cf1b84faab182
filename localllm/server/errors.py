"""API errors in OpenAI's JSON shape, {"error": {"message", "type", "param", "code"}}, or on the Ollama API's
routes in Ollama's, {"error": "message"} (its clients read that string); never a traceback."""
from __future__ import annotations

import json

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}
# The Ollama API's routes (routes_ollama.py and the embeddings routes): their errors are Ollama-shaped.
OLLAMA_PATHS = frozenset({"/", "/api/version", "/api/tags", "/api/show", "/api/ps", "/api/chat", "/api/generate",
                          "/api/pull", "/api/copy", "/api/delete", "/api/embed", "/api/embeddings"})


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers

    def body(self, path: str | None = None) -> dict:
        """The error as the route at `path` answers it: Ollama's shape on the Ollama API, else OpenAI's."""
        if path in OLLAMA_PATHS:
            return {"error": self.message}
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, path: str | None = None) -> JSONResponse:
        return _ErrorResponse(self.body(path), status_code=self.status, headers=self.headers)


class _ErrorResponse(JSONResponse):
    """ASCII JSON: a message may quote what the client sent, lone surrogates included, and must still encode."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model '{name}' does not exist or you do not have access to it.", param="model",
                    code="model_not_found")


def _param(loc) -> str | None:
    """A pydantic error location as a parameter path (messages.0.content), without the names pydantic gives
    the members of a union (str, list[int], function-after[...])."""
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    return ".".join(parts) or None


def _validation_error(exc: RequestValidationError) -> APIError:
    # of a union's failed members, the one that got deepest into the value is the one the client meant
    first = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={})
    kind = first.get("type", "")
    if kind == "json_invalid":
        return APIError(400, f"We could not parse the JSON body of your request: {first.get('msg', 'invalid JSON')}",
                        code="invalid_json")
    param = _param(first.get("loc", ()))
    if kind == "missing":
        message = f"Missing required parameter: '{param}'." if param else "The request body is missing."
        return APIError(400, message, param=param, code="missing_required_parameter")
    value = jsonable_encoder(first.get("input"))
    detail = first.get("msg", "invalid value")
    where = f"'{param}'" if param else "the request body"
    return APIError(400, f"Invalid value for {where}: {detail} (got {value!r}).", param=param,
                    code="invalid_value")


def install_handlers(app) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = {404: f"Unknown route {request.method} {request.url.path}.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}.get(
            exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, headers=exc.headers).response(request.url.path)   # 405's Allow

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return APIError(500, f"Internal error: {type(exc).__name__}.", code="internal_error").response(
            request.url.path)
