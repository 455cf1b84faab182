"""One streaming chat completion as a client sees it: status, time to first token, latency, tokens, how it
ended. Used by the load test and the fault tests."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx


@dataclass
class StreamResult:
    status: int | None = None
    ttft: float | None = None          # seconds to the first content
    latency: float | None = None       # seconds to the end of the stream
    tokens: int = 0                    # usage.completion_tokens
    finish_reason: str | None = None
    done: bool = False                 # `data: [DONE]` arrived
    error: str | None = None           # an error event's or body's code, or the transport exception
    disconnected: bool = False         # the client hung up on purpose

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.done and self.finish_reason is not None and self.error is None


def chat_body(model: str, content: str, max_tokens: int, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, **fields}


def error_code(body: dict) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code") or error.get("type")) if isinstance(error, dict) else "malformed error"


async def stream_chat(client: httpx.AsyncClient, body: dict, hang_up_after: int | None = None) -> StreamResult:
    """Streams `body`; with `hang_up_after`, closes the connection after that many content chunks."""
    result = StreamResult()
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.error = error_code(json.loads(await response.aread() or b"{}"))
                return result
            await _read_events(response, result, start, hang_up_after)
    except (httpx.HTTPError, ValueError) as e:
        result.error = type(e).__name__
    result.latency = time.perf_counter() - start
    return result


async def _read_events(response: httpx.Response, result: StreamResult, start: float, hang_up_after) -> None:
    chunks = 0
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            result.done = True
            return
        event = json.loads(line[len("data: "):])
        if "error" in event:
            result.error = error_code(event)
            continue
        if event.get("usage"):
            result.tokens = event["usage"]["completion_tokens"]
        for choice in event.get("choices", []):
            if choice["delta"].get("content"):
                chunks += 1
                if result.ttft is None:
                    result.ttft = time.perf_counter() - start
            result.finish_reason = choice.get("finish_reason") or result.finish_reason
        if hang_up_after is not None and chunks >= hang_up_after:
            result.disconnected = True
            return
