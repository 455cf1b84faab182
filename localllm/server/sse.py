"""Streamed answers (server-sent events for the OpenAI API, newline-delimited JSON for Ollama's) that stop as
soon as the client goes away: the stream's generator is cancelled (its `finally` blocks run) and `on_close`
is called exactly once, however the response ends."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def event(payload: dict, name: str | None = None) -> str:
    """One event; `name` is its `event:` field (the Responses API names each event by its type)."""
    data = f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
    return f"event: {name}\n{data}" if name else data


def ndjson_line(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"


class SSEResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None],
                 media_type: str = "text/event-stream"):
        super().__init__(content, media_type=media_type,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Always watch for the disconnect (Starlette only does so below ASGI spec 2.4): a client that leaves
        # must free its KV blocks now, not when the next token fails to send.
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.on_close()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


class NDJSONResponse(SSEResponse):
    """One JSON object a line (application/x-ndjson), as Ollama streams its answers and progress."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None] = lambda: None):
        super().__init__(content, on_close, media_type="application/x-ndjson")
