"""The API as /openapi.json describes it: the statuses each route really answers, every error in its route's
shape (OpenAI's, or Ollama's on the Ollama API), and no 422 (request validation fails with 400, see
errors.py), so schema-driven clients and fuzzers can rely on it."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_WHY = {
    400: "The request is invalid: a parameter's type or value, a prompt over the context, an unsupported "
         "feature.",
    401: "The daemon requires an API key (Authorization: Bearer) and none or a wrong one was sent.",
    403: "The Host or Origin header is not allowed.",
    404: "The model is not known (or, for /api/unload, not loaded), or the response id is not kept.",
    413: "The request body is larger than the daemon accepts.",
    500: "The model failed to load, or its engine failed while generating.",
    502: "The Hub (or the package index, for the embedded model) failed, or sent a file that is corrupt.",
    503: "The model's queue is full, or its engine stopped: retry (Retry-After says when).",
}

# one server-sent event as a client parses it; its data is a JSON chunk, or [DONE] at the end
_EVENT = {"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}


class Health(BaseModel):
    status: Literal["ok"]
    pid: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Unloaded(BaseModel):
    model: str
    state: Literal["unloaded", "unloading"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Answer(BaseModel):
    id: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Usage
    system_fingerprint: Optional[str]


class ChatCompletion(_Answer):
    object: Literal["chat.completion"]


class Completion(_Answer):
    object: Literal["text_completion"]


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: Union[list[float], str]   # a base64 string with "encoding_format": "base64"


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


class ResponseObject(BaseModel):
    """A /v1/responses answer (its main fields; see the Responses API for the others)."""
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    model: str
    output: list[dict[str, Any]]
    usage: Optional[dict[str, Any]]
    previous_response_id: Optional[str]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class ErrorResponse(BaseModel):
    error: ErrorDetail


class OllamaError(BaseModel):
    error: str


def errors(*statuses: int, ollama: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route: its error statuses, each with the error model (Ollama's on its API), and 403
    (Host and Origin are checked on every route)."""
    model = OllamaError if ollama else ErrorResponse
    return {status: {"model": model, "description": _WHY[status]} for status in sorted({403, *statuses})}


def answer(model: type[BaseModel], done: bool = True) -> dict[int | str, dict[str, Any]]:
    """The 200 of a generation route: the whole answer as JSON, or with "stream": true server-sent events (ending
    with data: [DONE] when `done`)."""
    end = ", then data: [DONE]" if done else ""
    return {200: {"model": model, "description": "The answer, or with \"stream\": true its chunks as "
                  f"server-sent events (data: {{chunk}} lines{end}).",
                  "content": {"text/event-stream": {"schema": _EVENT}}}}



def openapi_schema(app: FastAPI) -> dict:
    """app.openapi: FastAPI's schema without the 422 it adds to every route taking a body."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                             description="localllm's daemon: an OpenAI-compatible API, the Ollama API and its own "
                                         "status routes.")
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
