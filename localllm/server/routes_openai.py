"""The OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions and /v1/embeddings."""
from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localllm.server.echo import Echo, echo_of
from localllm.server.embeddings import embed
from localllm.server.errors import APIError, model_not_found
from localllm.server.generation import collect, start
from localllm.server.jobs import ClientGone, Job, unless_disconnected
from localllm.server.openai_format import (chat_chunk, chat_logprobs, chat_response, completion_chunk,
                                           completion_logprobs, completion_response, embedding_list, new_id, now,
                                           usage)
from localllm.server.openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from localllm.server.openai_tools import ToolPlan, finish_reason, read_calls, stream_deltas
from localllm.server.openapi import (ChatCompletion, Completion, EmbeddingList, ModelCard, ModelList, answer,
                                     errors)
from localllm.server.sse import DONE, SSEResponse, event

router = APIRouter()
GENERATION_ERRORS = (400, 401, 404, 413, 500, 503)
_CREATED = now()


def _card(name: str) -> dict:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "localllm"}


@router.get("/v1/models", response_model=None, responses={200: {"model": ModelList}, **errors(401)})
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_card(n) for n in request.app.state.daemon.models.available()]}


@router.get("/v1/models/{model:path}", response_model=None, responses={200: {"model": ModelCard}, **errors(401, 404)})
async def get_model(model: str, request: Request) -> dict:
    found = request.app.state.daemon.models.lookup(model)
    if found is None:
        raise model_not_found(model)
    return _card(found[0])


@router.post("/v1/chat/completions", response_model=None,
             responses={**answer(ChatCompletion), **errors(*GENERATION_ERRORS)})
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return await _serve(request, body, chat=True)


@router.post("/v1/completions", response_model=None,
             responses={**answer(Completion), **errors(*GENERATION_ERRORS)})
async def completions(body: CompletionRequest, request: Request):
    return await _serve(request, body, chat=False)


@router.post("/v1/embeddings", response_model=None,
             responses={200: {"model": EmbeddingList}, **errors(*GENERATION_ERRORS)})
async def embeddings(body: EmbeddingRequest, request: Request):
    try:
        result = await embed(request, body.model, body.input, dimensions=body.dimensions,
                             keep_alive_s=body.keep_alive)
    except ClientGone:
        return Response(status_code=499)   # nobody reads it; the requests were aborted
    return JSONResponse(embedding_list(result.model, result.vectors, result.prompt_tokens, body.encoding_format))


async def _serve(request: Request, body, chat: bool):
    generation = await start(request, body, chat)
    job, model, params = generation.job, generation.model, generation.params
    texts = generation.texts()
    echo = None if chat else echo_of(body, generation.prompts, model.client.tokenizer)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        shape = (_chat_stream(job, model.name, params.n, texts, generation.prompt_tokens, include_usage,
                              generation.tools) if chat
                 else _completion_stream(job, model.name, params.n, texts, generation.prompt_tokens, include_usage,
                                         echo))
        return SSEResponse(shape, job.close)
    try:
        choices = await unless_disconnected(request, collect(job, params.n))
    except ClientGone:
        return Response(status_code=499)   # nobody reads it; the request was aborted
    finally:
        job.close()
    if generation.tools and generation.tools.reads_calls:
        for choice in choices:
            read_calls(choice, generation.tools.parser())
    if echo is not None:
        echo.apply(choices, params.n, texts is not None)
    shape = chat_response if chat else completion_response
    return JSONResponse(shape(new_id("chatcmpl" if chat else "cmpl"), model.name, choices, texts,
                              generation.prompt_tokens))


async def _chat_stream(job: Job, model: str, n: int, texts, prompt_tokens: int, include_usage: bool,
                       tools: ToolPlan):
    response_id, created = new_id("chatcmpl"), now()

    def chunk(choices: list[dict]) -> str:
        return event(chat_chunk(response_id, created, model, choices, include_usage))

    parsers = [tools.parser() for _ in range(len(job.requests) * n)]
    for i in range(len(parsers)):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
    completion_tokens = 0
    try:
        async for request, delta in job.deltas():
            i = request.tag * n + delta.index
            completion_tokens += len(delta.token_ids)
            logprobs = chat_logprobs(texts, delta.logprobs) if texts and delta.logprobs else None
            parser, reason = parsers[i], delta.finish_reason
            pieces = [delta.text] if parser is None else parser.feed(delta.text) + (
                parser.finish() if reason is not None else [])
            deltas = stream_deltas(pieces, parser.calls if parser else []) or ([{"content": ""}] if logprobs else [])
            for k, piece in enumerate(deltas):
                yield chunk([{"index": i, "delta": piece, "logprobs": None if k else logprobs, "finish_reason": None}])
            if reason is not None:
                reason = finish_reason(reason, parser.calls) if parser else reason
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}])
    except APIError as e:
        yield event(e.body())
        yield DONE
        return
    if include_usage:
        yield event({"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "system_fingerprint": None, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    yield DONE


async def _completion_stream(job: Job, model: str, n: int, texts, prompt_tokens: int, include_usage: bool,
                             echo: Echo | None):
    response_id, created = new_id("cmpl"), now()
    completion_tokens = 0
    offsets: dict[int, int] = {}
    try:
        async for request, delta in job.deltas():
            i = request.tag * n + delta.index
            if echo is not None and i not in offsets:   # the prompt goes first (its logprobs come with this delta)
                choice, offsets[i] = echo.first_chunk(i, n, texts, delta.prompt_logprobs)
                yield event(completion_chunk(response_id, created, model, [choice], include_usage))
            if echo is not None and echo.prompt_only:   # see Echo.apply
                delta = replace(delta, text="", token_ids=[], logprobs=None,
                                finish_reason="length" if delta.finish_reason else None)
            completion_tokens += len(delta.token_ids)
            logprobs = None
            if texts and delta.logprobs:
                logprobs, offsets[i] = completion_logprobs(texts, delta.logprobs, offsets.get(i, 0))
            if delta.text or logprobs or delta.finish_reason is not None:
                yield event(completion_chunk(response_id, created, model, [
                    {"index": i, "text": delta.text, "logprobs": logprobs, "finish_reason": delta.finish_reason}],
                    include_usage))
    except APIError as e:
        yield event(e.body())
        yield DONE
        return
    if include_usage:
        yield event({"id": response_id, "object": "text_completion", "created": created, "model": model,
                     "system_fingerprint": None, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    yield DONE
