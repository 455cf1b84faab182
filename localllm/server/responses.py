"""The Responses API's shapes and memory: a /v1/responses request as the chat it is (instructions, the stored
conversation of previous_response_id, then the input items, as chat messages), the Response object and its
stream events, and the responses kept in memory so that a later request can continue from one.

Kept responses live in the daemon's memory only (lost when it stops), at most MAX_STORED_RESPONSES of them, the
least recently used going first; each holds its whole conversation, so one costs about its context's text."""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import ValidationError

from localllm.server.errors import APIError
from localllm.server.openai_format import Choice, new_id
from localllm.server.openai_schemas import ChatCompletionRequest, ResponseFormat, ResponsesRequest, SamplingExtras

MAX_STORED_RESPONSES = 256
_TEXT_PARTS = ("input_text", "output_text")
LOGPROBS = "message.output_text.logprobs"
# what OpenAI's `include` may name: the others add to items this server never makes (reasoning, tool calls,
# images), so there is nothing of theirs to add
INCLUDABLE = (LOGPROBS, "reasoning.encrypted_content", "file_search_call.results", "web_search_call.action.sources",
              "web_search_call.results", "message.input_image.image_url", "computer_call_output.output.image_url",
              "code_interpreter_call.outputs")


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class StoredResponse:
    response: dict                 # the Response object as it was answered
    messages: list[dict]           # the conversation it ended, its own answer included, without instructions


class ResponseStore:
    """Responses by id, least recently used first out beyond `capacity`."""

    def __init__(self, capacity: int = MAX_STORED_RESPONSES):
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None


def conversation(body: ResponsesRequest, store: ResponseStore) -> list[dict]:
    """The chat messages of the request, without its instructions: those of the response it continues (whose own
    instructions are not carried over, as OpenAI does), then its input."""
    refuse_unsupported(body)
    history: list[dict] = []
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id)
        if previous is None:
            raise _bad(f"Previous response with id '{body.previous_response_id}' not found.", "previous_response_id",
                       "previous_response_not_found")
        history = previous.messages
    if isinstance(body.input, str):
        return [*history, {"role": "user", "content": body.input}]
    if not body.input:
        raise _bad("'input' must not be empty.", "input")
    return [*history, *(_message(item, i) for i, item in enumerate(body.input))]


def refuse_unsupported(body: ResponsesRequest) -> None:
    if body.background:
        raise _bad("Background responses are not supported.", "background", "unsupported_parameter")
    if body.conversation is not None:
        raise _bad("Conversations are not supported; chain responses with previous_response_id.", "conversation",
                   "unsupported_parameter")
    for i, name in enumerate(body.include or []):
        if name not in INCLUDABLE:
            raise _bad(f"Invalid value for 'include[{i}]': {name!r}; supported: {', '.join(INCLUDABLE)}.",
                       f"include[{i}]")
    # Responses' tools and calls have their own shapes (function_call items); /v1/chat/completions takes tools
    if body.tools or body.tool_choice not in (None, "auto", "none"):
        raise _bad("Tools are not supported on /v1/responses; /v1/chat/completions takes them.", "tools",
                   "unsupported_parameter")


def _message(item, i: int) -> dict:
    where = f"input[{i}]"
    if item.type not in (None, "message"):
        raise _bad(f"Only message items are supported in 'input', got type {item.type!r}.", f"{where}.type",
                   "unsupported_content")
    if item.role is None or item.content is None:
        raise _bad("A message item needs a role and content.", where)
    content = item.content
    if isinstance(content, list):
        for part in content:
            if part.type not in _TEXT_PARTS or part.text is None:
                raise _bad(f"Only text content parts ({', '.join(_TEXT_PARTS)}) are supported, got type "
                           f"{part.type!r}.", f"{where}.content", "unsupported_content")
        content = "\n".join(part.text for part in content)
    return {"role": item.role, "content": content}


def wants_logprobs(body: ResponsesRequest) -> bool:
    """Whether the output text carries its tokens' logprobs: `include` names them, or top_logprobs is given."""
    return LOGPROBS in (body.include or []) or body.top_logprobs is not None


def chat_request(body: ResponsesRequest, messages: list[dict]) -> ChatCompletionRequest:
    """The chat completion this response is: the same sampling and the same refusals (formats, top_logprobs out of
    range)."""
    system = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    response_format = _chat_format(text_format_of(body))
    logprobs = wants_logprobs(body)
    return ChatCompletionRequest(
        model=body.model, messages=system + messages, max_completion_tokens=body.max_output_tokens,
        temperature=body.temperature, top_p=body.top_p, logprobs=logprobs,
        top_logprobs=(body.top_logprobs or 0) if logprobs else None,
        response_format=response_format, **body.model_dump(include=set(SamplingExtras.model_fields)))


def text_format_of(body: ResponsesRequest) -> dict:
    return (body.text.format if body.text is not None else None) or {"type": "text"}


def _chat_format(text_format: dict) -> ResponseFormat:
    """Responses' text.format as chat's response_format (a schema's name, schema and strict go under
    "json_schema")."""
    if text_format.get("type") == "json_schema":
        text_format = {"type": "json_schema", "json_schema": {k: v for k, v in text_format.items() if k != "type"}}
    try:
        return ResponseFormat.model_validate(text_format)
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(str(part) for part in ("text", "format", *error["loc"]) if part != "json_schema")
        raise _bad(f"Invalid value for '{where}': {error['msg']}.", where) from None


@dataclass
class ResponseDraft:
    """One response while it is made: what the request asked, and the answer so far."""
    body: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: new_id("resp"))
    message_id: str = field(default_factory=lambda: new_id("msg"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    text: str = ""
    logprobs: list[dict] = field(default_factory=list)   # the text's tokens, as chat's logprobs.content entries
    status: str = "in_progress"
    usage: dict | None = None
    completed_at: int | None = None
    error: dict | None = None

    def finish(self, choice: Choice, prompt_tokens: int, logprobs: list[dict]) -> None:
        self.text, self.logprobs = choice.text, logprobs
        self.status = "incomplete" if choice.finish_reason == "length" else "completed"
        self.completed_at = int(time.time())
        self.usage = {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0,
                                                                               "cache_write_tokens": 0},
                      "output_tokens": choice.num_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": prompt_tokens + choice.num_tokens}

    def fail(self, error: APIError) -> None:
        self.status = "failed"
        self.error = {"code": error.code or "server_error", "message": error.message}

    def text_part(self) -> dict:
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": self.logprobs}

    def message(self, status: str | None = None) -> dict:
        done = self.status in ("completed", "incomplete")
        return {"type": "message", "id": self.message_id, "status": status or self.status, "role": "assistant",
                "content": [self.text_part()] if done else []}

    def as_dict(self) -> dict:
        body = self.body
        incomplete = {"reason": "max_output_tokens"} if self.status == "incomplete" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": self.status,
            "completed_at": self.completed_at, "error": self.error, "incomplete_details": incomplete,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens, "model": self.model,
            "output": [self.message()] if self.status in ("completed", "incomplete") else [],
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id, "reasoning": {"effort": None, "summary": None},
            "store": body.store is not False, "temperature": body.temperature, "top_p": body.top_p,
            "text": {"format": text_format_of(body)}, "tool_choice": "auto", "top_logprobs": body.top_logprobs,
            "tools": [], "truncation": "disabled", "usage": self.usage, "user": body.user,
            "metadata": body.metadata or {}, "background": False,
        }


def keep(store: ResponseStore, draft: ResponseDraft, messages: list[dict]) -> None:
    """Remembers a finished response for previous_response_id, unless the request said store: false."""
    if draft.body.store is not False and draft.status in ("completed", "incomplete"):
        answer = {"role": "assistant", "content": draft.text}
        store.put(draft.id, StoredResponse(draft.as_dict(), [*messages, answer]))
