"""One API call in flight: its engine requests (one per prompt, each with n completions), the queue their
deltas arrive on, admission against the queue limit, and clean-up (abort what is unfinished, release the
model) exactly once however the call ends."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from localllm.engine.outputs import StreamDelta
from localllm.sampling_params import SamplingParams
from localllm.server.engine_client import EngineRequest
from localllm.server.errors import APIError
from localllm.server.models import LoadedModel, ModelManager


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was complete."""


class Job:
    def __init__(self, manager: ModelManager, model: LoadedModel, keep_alive_s: float | None):
        self.manager = manager
        self.model = model
        self.keep_alive_s = keep_alive_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.requests: list[EngineRequest] = []
        self._closed = False

    def submit(self, prompts: list[list[int]], params: SamplingParams) -> None:
        client = self.model.client
        settings = self.manager.settings
        limit = settings.max_num_seqs + settings.max_queued
        wanted = params.n * len(prompts)
        if client.active_sequences + wanted > limit:
            raise APIError(503, f"The server is overloaded: {client.active_sequences} sequences are running or "
                                f"queued for model '{self.model.name}' and at most {limit} may be. Retry shortly.",
                           code="overloaded", headers={"Retry-After": "1"})
        for tag, prompt in enumerate(prompts):
            self.requests.append(client.submit(prompt, params, self.queue, tag))

    async def deltas(self) -> AsyncIterator[tuple[EngineRequest, StreamDelta]]:
        """Every delta of every completion, as it arrives; raises APIError if the engine fails."""
        remaining = sum(r.params.n for r in self.requests)
        while remaining:
            item = await self.queue.get()
            if isinstance(item, APIError):
                raise item
            request, delta = item
            if delta.finish_reason is not None:
                remaining -= 1
            yield request, delta

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for request in self.requests:
            self.model.client.abort(request)
        self.manager.release(self.model, self.keep_alive_s)


async def until_disconnect(request) -> None:
    """Returns when the HTTP client goes away (the body has been read, so only a disconnect can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request, coroutine):
    """Awaits `coroutine`, or raises ClientGone (cancelling it) if the client disconnects first."""
    work = asyncio.ensure_future(coroutine)
    watcher = asyncio.ensure_future(until_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise ClientGone()
        return work.result()
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
