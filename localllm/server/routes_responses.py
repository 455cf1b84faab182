"""POST /v1/responses (text in, text out, streamed or not, continuing a kept response with previous_response_id),
GET and DELETE /v1/responses/{id}. A response is made as the chat completion it amounts to (generation.start), then
shaped as a Response object or as the Responses stream: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta..., response.output_text.done,
response.content_part.done, response.output_item.done, then response.completed (or response.incomplete when
max_output_tokens cut it short), each numbered by sequence_number."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localllm.server.errors import APIError
from localllm.server.generation import Generation, collect, start
from localllm.server.jobs import ClientGone, unless_disconnected
from localllm.server.openai_format import Choice, chat_logprobs
from localllm.server.openai_schemas import ResponsesRequest
from localllm.server.openapi import ResponseObject, answer, errors
from localllm.server.responses import ResponseDraft, chat_request, conversation, keep
from localllm.server.sse import SSEResponse, event

router = APIRouter()


@router.post("/v1/responses", response_model=None,
             responses={**answer(ResponseObject, done=False), **errors(400, 401, 404, 413, 500, 503)})
async def create_response(body: ResponsesRequest, request: Request):
    store = request.app.state.daemon.responses
    messages = conversation(body, store)
    generation = await start(request, chat_request(body, messages), chat=True)
    draft = ResponseDraft(body, generation.model.name)
    if body.stream:
        return SSEResponse(_stream(generation, draft, messages, store), generation.job.close)
    try:
        choice = (await unless_disconnected(request, collect(generation.job, 1)))[0]
    except ClientGone:
        return Response(status_code=499)   # nobody reads it; the request was aborted
    finally:
        generation.job.close()
    texts = generation.texts()
    draft.finish(choice, generation.prompt_tokens, chat_logprobs(texts, choice.logprobs)["content"] if texts else [])
    keep(store, draft, messages)
    return JSONResponse(draft.as_dict())


@router.get("/v1/responses/{response_id}", response_model=None,
            responses={200: {"model": ResponseObject}, **errors(401, 404)})
async def get_response(response_id: str, request: Request) -> dict:
    stored = request.app.state.daemon.responses.get(response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored.response


@router.delete("/v1/responses/{response_id}", status_code=204, responses=errors(401, 404))
async def delete_response(response_id: str, request: Request) -> Response:
    if not request.app.state.daemon.responses.delete(response_id):
        raise _not_found(response_id)
    return Response(status_code=204)


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param="response_id", code="not_found")


class _Events:
    """The stream's events, numbered in the order they are sent."""

    def __init__(self, draft: ResponseDraft):
        self.draft = draft
        self.sequence_number = 0

    def __call__(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return event(payload, kind)

    def item(self, kind: str, **fields) -> str:
        """An event about the message's text part (output 0, content 0)."""
        return self(kind, item_id=self.draft.message_id, output_index=0, content_index=0, **fields)


async def _stream(generation: Generation, draft: ResponseDraft, messages: list[dict], store):
    emit = _Events(draft)
    yield emit("response.created", response=draft.as_dict())
    yield emit("response.in_progress", response=draft.as_dict())
    yield emit("response.output_item.added", output_index=0, item=draft.message("in_progress"))
    yield emit.item("response.content_part.added", part=draft.text_part())
    choice, texts, logprobs = Choice(), generation.texts(), []
    try:
        async for _, delta in generation.job.deltas():
            choice.text += delta.text
            choice.num_tokens += len(delta.token_ids)
            choice.finish_reason = delta.finish_reason
            entries = chat_logprobs(texts, delta.logprobs)["content"] if texts and delta.logprobs else []
            logprobs += entries
            if delta.text or entries:
                yield emit.item("response.output_text.delta", delta=delta.text, logprobs=entries)
    except APIError as e:
        draft.fail(e)
        yield emit("error", code=e.code, message=e.message, param=e.param)
        yield emit("response.failed", response=draft.as_dict())
        return
    draft.finish(choice, generation.prompt_tokens, logprobs)
    yield emit.item("response.output_text.done", text=draft.text, logprobs=logprobs)
    yield emit.item("response.content_part.done", part=draft.text_part())
    yield emit("response.output_item.done", output_index=0, item=draft.message())
    keep(store, draft, messages)
    yield emit("response.completed" if draft.status == "completed" else "response.incomplete",
               response=draft.as_dict())
