"""One API call in flight: its engine requests (one per prompt, each with n completions, or one per input to
embed), the queue their deltas or vectors arrive on, admission against the queue limit, and clean-up (abort what
is unfinished, release the model) exactly once however the call ends."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from localllm.engine.outputs import StreamDelta
from localllm.pooling_params import PoolingParams
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

    @property
    def room(self) -> int:
        """How many more sequences the model's queue takes now."""
        settings = self.manager.settings
        return settings.max_num_seqs + settings.max_queued - self.model.client.active_sequences

    def submit(self, prompts: list[list[int]], params: SamplingParams | PoolingParams, first_tag: int = 0) -> None:
        """Submits all the prompts, or none if the model's queue has no room for them (503). Their tags (where the
        caller finds their answers) count from first_tag."""
        if params.n * len(prompts) > self.room:
            client, settings = self.model.client, self.manager.settings
            raise APIError(503, f"The server is overloaded: {client.active_sequences} sequences are running or "
                                f"queued for model '{self.model.name}' and at most "
                                f"{settings.max_num_seqs + settings.max_queued} may be. Retry shortly.",
                           code="overloaded", headers={"Retry-After": "1"})
        for tag, prompt in enumerate(prompts, first_tag):
            self.requests.append(self.model.client.submit(prompt, params, self.queue, tag))

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

    async def embeddings(self, inputs: list[list[int]], params: PoolingParams) -> list[list[float]]:
        """The vector of each input, in order. However many there are, at most the queue's room (at least one) are
        in the engine at once: each finished one makes way for the next. Raises APIError if the engine fails."""
        vectors: list[list[float] | None] = [None] * len(inputs)
        window = max(1, min(len(inputs), self.room))
        self.submit(inputs[:window], params)
        for _ in inputs:
            item = await self.queue.get()
            if isinstance(item, APIError):
                raise item
            request, event = item
            vectors[request.tag] = event.embedding
            following = len(self.requests)
            if following < len(inputs):
                self.requests.append(self.model.client.submit(inputs[following], params, self.queue, following))
        return vectors

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
