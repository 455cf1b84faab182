"""/api/chat and /api/generate: an Ollama request becomes one engine request (its options mapped onto
SamplingParams, its prompt templated) and is answered as Ollama answers: a stream of JSON lines unless
"stream" is false, the last object with done_reason and the timings in nanoseconds. A request without
messages or prompt only loads the model (or, with keep_alive 0, unloads it)."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from localllm.engine.events import SampledToken
from localllm.engine.outputs import StreamDelta
from localllm.loader.fim import FimUnsupportedError, fim_prompt
from localllm.sampling_params import Guidance, SamplingParams
from localllm.server import ollama_tools
from localllm.server.errors import APIError
from localllm.server.jobs import ClientGone, Job, unless_disconnected
from localllm.server.ollama_models import find
from localllm.server.ollama_schemas import DEFAULT_OPTIONS, ChatRequest, GenerateRequest, Options
from localllm.server.openai_format import TokenTexts, chat_logprobs, token_texts
from localllm.server.openai_requests import (MAX_TOP_LOGPROBS, check_generates, check_prompt_ids, checked_guidance,
                                             templated_prompt)
from localllm.server.openai_tools import ToolPlan, check_function_names
from localllm.tool_calling.parser import ToolCallParser
from localllm.server.sse import NDJSONResponse, ndjson_line

# SamplingParams' names of the options whose names differ, for error messages in the client's terms
_OPTION_NAMES = {"repetition_penalty": "repeat_penalty", "max_tokens": "num_predict"}


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def created_at() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def sampling_params(options: Options | None, guidance: Guidance | None = None,
                    logprobs: int | None = None) -> SamplingParams:
    """Ollama's options on our sampling, its defaults for what they leave out. num_predict <= 0 is Ollama's
    "no limit" (up to the context); a negative seed, its "random". logprobs: alternatives per token, or None."""
    o = options or Options()

    def pick(value, name, default=None):
        return DEFAULT_OPTIONS.get(name, default) if value is None else value

    try:
        return SamplingParams(
            temperature=pick(o.temperature, "temperature"), top_p=pick(o.top_p, "top_p"),
            top_k=pick(o.top_k, "top_k"), min_p=pick(o.min_p, "min_p", 0.0),
            repetition_penalty=pick(o.repeat_penalty, "repeat_penalty", 1.0),
            presence_penalty=pick(o.presence_penalty, "presence_penalty", 0.0),
            frequency_penalty=pick(o.frequency_penalty, "frequency_penalty", 0.0),
            seed=o.seed if o.seed is not None and o.seed >= 0 else None,
            max_tokens=o.num_predict if o.num_predict is not None and o.num_predict > 0 else None, stop=o.stop,
            guidance=guidance, logprobs=logprobs)
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        option = _OPTION_NAMES.get(name, name)
        raise _bad(f"invalid option: {option}{str(e)[len(name):]}", f"options.{option}") from None


def format_guidance(body: ChatRequest | GenerateRequest) -> Guidance | None:
    """The grammar `format` asks for: "json", any JSON value's object; a JSON schema, JSON that follows it."""
    if body.format in (None, ""):
        return None
    if isinstance(body, ChatRequest) and body.tools:
        # one grammar holds the output: calls could not be written under a JSON schema, nor the answer after
        raise _bad("format cannot be combined with tools", "format")
    if body.format == "json":
        return checked_guidance(Guidance("json_object"), "format")
    if isinstance(body.format, dict):
        return checked_guidance(Guidance("json_schema", json.dumps(body.format)), "format")
    raise _bad(f"format must be \"json\" or a JSON schema, got {body.format!r}", "format")


def reject_unsupported(body: ChatRequest | GenerateRequest) -> None:
    """What localllm does not do yet is refused, never ignored: the answer would not be what was asked."""
    if body.think not in (None, False):
        raise _bad(f"\"{body.model_name}\" does not support thinking", "think")
    if isinstance(body, ChatRequest):
        check_function_names(body.tools)
        for i, message in enumerate(body.messages or []):
            if message.images:
                raise _bad("images are not supported: localllm's models take text only", f"messages[{i}].images")
        return
    if body.images:
        raise _bad("images are not supported: localllm's models take text only", "images")
    if body.template:
        raise _bad("template is not supported: the model's own chat template is applied (or none, with raw)",
                   "template")


def logprobs_asked(body: ChatRequest | GenerateRequest) -> int | None:
    """How many alternatives each token's logprob comes with (top_logprobs, 0-20), or None without `logprobs`."""
    top = body.top_logprobs or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise _bad(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top}", "top_logprobs")
    return top if body.logprobs else None


def _prompt(client, body: ChatRequest | GenerateRequest, name: str, tools: ToolPlan | None) -> list[int]:
    tokenizer = client.tokenizer
    if tools is not None:
        return ollama_tools.chat_prompt(tokenizer, name, body, tools)
    if body.suffix:   # fill in the middle, between prompt and suffix, in the layout the model was trained on
        try:
            return fim_prompt(tokenizer, body.prompt or "", body.suffix)
        except FimUnsupportedError as e:
            raise _bad(f"The model '{name}' cannot fill in the middle: {e}.", "suffix") from None
    if body.raw or not tokenizer.chat_template:
        ids = tokenizer.encode(body.prompt or "") if body.prompt else []
    else:
        system = [{"role": "system", "content": body.system}] if body.system else []
        ids = templated_prompt(tokenizer, name, system + [{"role": "user", "content": body.prompt or ""}], "use raw")
    ids = list(body.context or []) + ids
    check_prompt_ids(ids, client.info.vocab_size, "context" if body.context else "prompt")
    return ids


def fit_context(params: SamplingParams, prompt_tokens: int, model_len: int, num_ctx: int | None) -> SamplingParams:
    """The answer may fill the context (num_ctx, at most the engine's) that the prompt leaves, no more."""
    context = min(num_ctx, model_len) if num_ctx and num_ctx > 0 else model_len
    room = context - prompt_tokens
    if room <= 0:
        raise _bad(f"the prompt is {prompt_tokens} tokens, which leaves no room in the context of {context} "
                   "tokens; shorten it" + (" or raise num_ctx" if context < model_len else ""), "options.num_ctx")
    return replace(params, max_tokens=room if params.max_tokens is None else min(params.max_tokens, room))


@dataclass
class Answer:
    """One answer being built: its chunks and its last object, with the clock readings its timings come from."""
    model: str                        # as the request named it
    chat: bool
    prompt: list[int]
    with_context: bool                # /api/generate without raw returns the conversation's token ids
    started_ns: int
    loaded_ns: int
    submitted_ns: int = 0
    first_token_ns: int | None = None
    tokens: list[int] = field(default_factory=list)
    calls: ToolCallParser | None = None   # a chat's tool calls are read out of its text with this
    texts: TokenTexts | None = None       # with logprobs: how their tokens are spelled
    unsent: list[SampledToken] = field(default_factory=list)   # logprobs not in a chunk yet

    def chunk(self, text: str, done: bool = False, tool_calls: list[dict] = ()) -> dict:
        message = {"role": "assistant", "content": text, **({"tool_calls": tool_calls} if tool_calls else {})}
        part = {"message": message} if self.chat else {"response": text}
        out = {"model": self.model, "created_at": created_at(), **part, "done": done}
        if self.texts is not None and self.unsent:   # the logprobs of the tokens behind this text, as Ollama sends
            out["logprobs"], self.unsent = chat_logprobs(self.texts, self.unsent)["content"], []
        return out

    def add(self, delta: StreamDelta) -> None:
        if delta.token_ids and self.first_token_ns is None:
            self.first_token_ns = time.monotonic_ns()
        self.tokens += delta.token_ids
        self.unsent += delta.logprobs or []

    def last(self, text: str, done_reason: str, tool_calls: list[dict] = ()) -> dict:
        end = time.monotonic_ns()
        first = self.first_token_ns or end
        out = {**self.chunk(text, done=True, tool_calls=tool_calls), "done_reason": done_reason}
        if self.with_context:
            out["context"] = self.prompt + self.tokens
        return {**out, "total_duration": end - self.started_ns, "load_duration": self.loaded_ns - self.started_ns,
                "prompt_eval_count": len(self.prompt), "prompt_eval_duration": first - self.submitted_ns,
                "eval_count": len(self.tokens), "eval_duration": end - first}


async def serve(request: Request, body: ChatRequest | GenerateRequest):
    started = time.monotonic_ns()
    daemon = request.app.state.daemon
    name = find(daemon.models, body.model_name)
    reject_unsupported(body)
    # bad values fail before any model is loaded
    params = sampling_params(body.options, format_guidance(body), logprobs_asked(body))
    chat = isinstance(body, ChatRequest)
    model = await daemon.models.acquire(name)
    if not (body.messages if chat else (body.prompt or body.context or body.suffix)):
        daemon.models.release(model, body.keep_alive)
        answer = Answer(body.model_name, chat, [], False, started, time.monotonic_ns())
        return JSONResponse({**answer.chunk("", done=True), "done_reason": "unload" if body.keep_alive == 0
                             else "load"})
    job = Job(daemon.models, model, body.keep_alive)
    try:
        check_generates(model)
        with_context = not chat and not body.raw and not body.suffix
        answer = Answer(body.model_name, chat, [], with_context, started, time.monotonic_ns())
        tools = ollama_tools.tool_plan(model.client.tokenizer, body) if chat else None
        answer.calls = tools.parser() if tools else None
        answer.texts = token_texts(model.client.tokenizer) if params.logprobs is not None else None
        answer.prompt = await asyncio.to_thread(_prompt, model.client, body, name, tools)   # seconds for a long one
        num_ctx = body.options.num_ctx if body.options else None
        job.submit([answer.prompt], fit_context(params, len(answer.prompt), model.client.info.max_model_len, num_ctx))
        answer.submitted_ns = time.monotonic_ns()
        daemon.metrics.prompt_tokens.labels(model.name).inc(len(answer.prompt))
    except BaseException:
        job.close()
        raise
    if body.stream is not False:
        return NDJSONResponse(_stream(job, answer), job.close)
    try:
        text, reason = await unless_disconnected(request, _collect(job, answer))
    except ClientGone:
        return Response(status_code=499)   # nobody reads it; the request was aborted
    finally:
        job.close()
    content, calls = ollama_tools.read(answer.calls, text, final=True)
    return JSONResponse(answer.last(content, reason, calls))


async def _collect(job: Job, answer: Answer) -> tuple[str, str]:
    parts, reason = [], "stop"
    async for _, delta in job.deltas():
        answer.add(delta)
        parts.append(delta.text)
        reason = delta.finish_reason or reason
    return "".join(parts), reason


async def _stream(job: Job, answer: Answer):
    try:
        async for _, delta in job.deltas():
            answer.add(delta)
            text, calls = ollama_tools.read(answer.calls, delta.text, final=delta.finish_reason is not None)
            if text or calls:
                yield ndjson_line(answer.chunk(text, tool_calls=calls))
            if delta.finish_reason is not None:
                yield ndjson_line(answer.last("", delta.finish_reason))
    except APIError as e:
        yield ndjson_line({"error": e.message})
