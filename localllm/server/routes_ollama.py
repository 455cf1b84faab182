"""The Ollama API on the daemon, in Ollama's shapes field for field, for the clients and tools that speak only
it: version, tags, show, ps, chat, generate, embed, pull, copy and delete, and the "Ollama is running" probe. Errors are
{"error": "..."} (errors.py). docs/api.md lists what is served and what is not."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from localllm.errors import InvalidModelNameError, LocalLLMError, ModelNotFoundError, one_line
from localllm.hub import store
from localllm.hub.copy import copy_model
from localllm.hub.reference import resolve_reference
from localllm.server import ollama_generate, ollama_models
from localllm.server.embeddings import embed
from localllm.server.errors import APIError
from localllm.server.jobs import ClientGone
from localllm.server.ollama_schemas import (ChatRequest, CopyRequest, DeleteRequest, EmbeddingsRequest, EmbedRequest,
                                            GenerateRequest, PullRequest, ShowRequest)
from localllm.server.openapi import errors
from localllm.server.pulls import failure_status
from localllm.server.routes_status import VERSION
from localllm.server.sse import NDJSONResponse, ndjson_line

router = APIRouter()
_GENERATION_ERRORS = (400, 401, 404, 413, 500, 503)


def _ndjson(description: str) -> dict:
    return {200: {"description": description, "content": {"application/x-ndjson": {}}}}


@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse,
                  responses={200: {"description": "What Ollama's clients probe for."}, **errors(401, ollama=True)})
async def root() -> str:
    return "Ollama is running"


@router.get("/api/version", response_model=None, responses=errors(401, ollama=True))
async def version() -> dict:
    return {"version": VERSION}


@router.get("/api/tags", response_model=None, responses=errors(401, ollama=True))
async def tags(request: Request) -> dict:
    manager = request.app.state.daemon.models
    return await asyncio.to_thread(ollama_models.tags, manager, manager.available())


@router.post("/api/show", response_model=None, responses=errors(400, 401, 404, 413, ollama=True))
async def show(body: ShowRequest, request: Request) -> dict:
    manager = request.app.state.daemon.models
    return await asyncio.to_thread(ollama_models.show, manager, ollama_models.find(manager, body.model_name))


@router.get("/api/ps", response_model=None, responses=errors(401, ollama=True))
async def ps(request: Request) -> dict:
    manager = request.app.state.daemon.models
    return await asyncio.to_thread(ollama_models.ps, manager, manager.status())


@router.post("/api/chat", response_model=None,
             responses={**_ndjson("The reply's chunks, one JSON object a line; with \"stream\": false one object."),
                        **errors(*_GENERATION_ERRORS, ollama=True)})
async def chat(body: ChatRequest, request: Request):
    return await ollama_generate.serve(request, body)


@router.post("/api/generate", response_model=None,
             responses={**_ndjson("The answer's chunks, one JSON object a line; with \"stream\": false one "
                                  "object."), **errors(*_GENERATION_ERRORS, ollama=True)})
async def generate(body: GenerateRequest, request: Request):
    return await ollama_generate.serve(request, body)


@router.post("/api/embed", response_model=None, responses=errors(400, 401, 404, 413, 500, 503, ollama=True))
async def embed_inputs(body: EmbedRequest, request: Request):
    """One vector per input, from the embeddings service /v1/embeddings uses (inputs cut to the context unless
    truncate is false)."""
    name = ollama_models.find(request.app.state.daemon.models, body.model_name)
    try:
        result = await embed(request, name, body.input, dimensions=body.dimensions, truncate=body.truncate is not False,
                             keep_alive_s=body.keep_alive)
    except ClientGone:
        return Response(status_code=499)   # nobody reads it
    return {"model": body.model_name, "embeddings": result.vectors, "total_duration": int(result.total_s * 1e9),
            "load_duration": int(result.load_s * 1e9), "prompt_eval_count": result.prompt_tokens}


@router.post("/api/embeddings", response_model=None, responses=errors(400, 401, 404, 413, 500, 503, ollama=True))
async def embed_prompt(body: EmbeddingsRequest, request: Request):
    """Ollama's older embeddings route: one prompt, one vector, cut to the context."""
    name = ollama_models.find(request.app.state.daemon.models, body.model_name)
    try:
        result = await embed(request, name, body.prompt, truncate=True, keep_alive_s=body.keep_alive, param="prompt")
    except ClientGone:
        return Response(status_code=499)
    return {"embedding": result.vectors[0]}


@router.post("/api/pull", response_model=None,
             responses={**_ndjson("Progress lines ({status, digest, total, completed}), then {\"status\": "
                                  "\"success\"}; with \"stream\": false only the last."),
                        **errors(400, 401, 404, 413, 502, ollama=True)})
async def pull(body: PullRequest, request: Request):
    """Downloads into the daemon's store; two clients pulling one model share one download and its progress."""
    name = body.model_name
    if not name:
        raise APIError(400, "model is required", param="model", code="missing_required_parameter")
    try:   # a request may only name what the aliases, the store or the Hub know: never a path
        reference = resolve_reference(ollama_models.local_name(name), body.revision or "main", paths=False)
    except LocalLLMError as e:
        raise APIError(failure_status(e), one_line(e), param="model") from None
    job = request.app.state.daemon.pulls.start(reference)
    if body.stream is False:
        await job.done.wait()
        if job.error is not None:
            raise APIError(job.error[0], job.error[1])
        return {"status": "success"}
    return NDJSONResponse(ndjson_line(event) async for event in job.follow())


@router.post("/api/copy", response_model=None, responses={200: {"description": "Copied."},
                                                           **errors(400, 401, 404, 413, ollama=True)})
async def copy(body: CopyRequest) -> Response:
    """Another name for a pulled model, its files shared (hub/copy.py), as `localllm cp`."""
    source = ollama_models.local_name(body.source)
    try:
        await asyncio.to_thread(copy_model, source, ollama_models.local_name(body.destination))
    except InvalidModelNameError as e:   # a name no model can have, or one taken
        raise APIError(400, one_line(e), param="destination") from None
    except ModelNotFoundError:
        raise ollama_models.not_found(body.source) from None
    return Response(status_code=200)


@router.delete("/api/delete", response_model=None, responses={200: {"description": "Deleted."},
                                                               **errors(400, 401, 404, 413, ollama=True)})
async def delete(body: DeleteRequest, request: Request) -> Response:
    """Removes a pulled model from the store (unloading it first if it is loaded), as `localllm rm --force`."""
    name = body.model_name
    if not name:
        raise APIError(400, "model is required", param="model", code="missing_required_parameter")
    try:
        entry = resolve_reference(ollama_models.local_name(name), paths=False).entry
    except LocalLLMError:
        entry = None
    if entry is None:
        raise ollama_models.not_found(name)
    manager = request.app.state.daemon.models
    if entry.name in manager.models:
        manager.unload(entry.name)
    try:
        await asyncio.to_thread(store.remove, entry.name)
    except LocalLLMError:   # removed meanwhile
        raise ollama_models.not_found(name) from None
    return Response(status_code=200)
