"""The front end's side of one engine process: start it, send it requests, and route its token events,
detokenized by an OutputProcessor, and its embeddings to per-request asyncio queues. Nothing here blocks the event
loop: a reader thread hands the pipe's messages to the loop, a writer thread feeds the pipe."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from localllm.config import Config
from localllm.engine.output_processor import OutputProcessor
from localllm.engine.outputs import StreamDelta
from localllm.errors import one_line
from localllm.loader.tokenizer import Tokenizer
from localllm.pooling_params import PoolingParams
from localllm.sampling_params import SamplingParams
from localllm.server.engine_spawn import EngineLoadError, SpawnedEngine, spawn_engine
from localllm.server.errors import APIError
from localllm.server.protocol import (AbortRequests, AddRequest, DecodeError, EmbedRequest, EngineFailed,
                                      EngineStats, FinishSequence, LoadFailed, Loaded, MessageRefused, ModelResolved,
                                      ProtocolError, RequestFailed, Shutdown, StepOutput, check_version)

log = logging.getLogger("localllm.server")


@dataclass
class _Exited:
    pass


@dataclass
class EngineRequest:
    """One engine request as the front end follows it. Several may share one queue (a completions call with
    several prompts); the queue receives (request, StreamDelta) pairs, or for a pooling request one (request,
    EmbeddingEvent) pair, or an APIError if the request fails."""
    request_id: str
    num_prompt_tokens: int
    params: SamplingParams | PoolingParams
    queue: asyncio.Queue
    tag: int = 0                               # the caller's index of this request (which prompt)
    submitted_at: float = field(default_factory=time.monotonic)
    finished: set[int] = field(default_factory=set)
    last_token_at: dict[int, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.finished) == self.params.n


class EngineClient:
    def __init__(self, name: str, config: Config, metrics=None, on_exit=None):
        self.name = name              # what requests call the model
        self.config = config          # config.model: what the engine resolves (alias, directory or .gguf file)
        self.metrics = metrics
        self.on_exit = on_exit        # called on the loop when the process ends for any reason
        self.info: Loaded | None = None
        self.stats = EngineStats()
        self.tokenizer = None
        self.processor: OutputProcessor | None = None
        self.failure: str | None = None
        self.exited = False
        self._requests: dict[str, EngineRequest] = {}
        self._outgoing: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loaded: asyncio.Future | None = None
        self._tokenizer: asyncio.Future | None = None   # read while the engine loads the weights
        self.process = None
        self._reaped: asyncio.Future | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def active_sequences(self) -> int:
        return sum(r.params.n for r in self._requests.values())

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    async def start(self, spawned: SpawnedEngine | None = None) -> Loaded:
        """Spawns the engine process (or follows `spawned`, started earlier for this model) and waits until its
        model is loaded and the front end has its tokenizer (raises EngineLoadError)."""
        self._loop = asyncio.get_running_loop()
        self._loaded = self._loop.create_future()
        if spawned is None:
            spawned = await asyncio.to_thread(spawn_engine, self.name, self.config)
        self.process, self._to_engine, self._from_engine = spawned.process, spawned.to_engine, spawned.from_engine
        threading.Thread(target=self._read_loop, name=f"engine-reader[{self.name}]", daemon=True).start()
        threading.Thread(target=self._write_loop, name=f"engine-writer[{self.name}]", daemon=True).start()
        info = await self._loaded
        try:
            self.tokenizer = await (self._tokenizer or asyncio.to_thread(Tokenizer.from_dir, Path(info.model_dir)))
        except Exception as e:  # noqa: BLE001 - the engine loaded it, so this is unexpected; report, don't crash
            await self.stop()
            raise EngineLoadError(type(e).__name__, one_line(e)) from None
        self.processor = OutputProcessor(self.tokenizer)
        return info

    @property
    def pooling(self):
        """How the model makes embeddings (a PoolingConfig), or None when it makes none."""
        return self.info.pooling if self.info is not None else None

    def submit(self, prompt_token_ids: list[int], params: SamplingParams | PoolingParams, queue_: asyncio.Queue,
               tag: int = 0) -> EngineRequest:
        """A generation request (SamplingParams), or a pooling one (PoolingParams)."""
        if self.exited:
            raise self._gone_error()
        request = EngineRequest(uuid.uuid4().hex, len(prompt_token_ids), params, queue_, tag)
        pools = isinstance(params, PoolingParams)
        message = (EmbedRequest if pools else AddRequest)(request.request_id, prompt_token_ids, params)
        self._send(message)   # raises before the request is registered
        self._requests[request.request_id] = request
        if not pools:
            self.processor.add_request(request.request_id, params)
        return request

    def abort(self, request: EngineRequest) -> None:
        """Frees the request's KV blocks in the engine at once; a finished request is left alone."""
        if self._requests.pop(request.request_id, None) is not None:
            self.processor.forget(request.request_id)
            self._send(AbortRequests([request.request_id]))

    async def stop(self, timeout: float = 5.0) -> None:
        """Asks the engine to exit, kills it if it does not within `timeout`, and reaps it."""
        if self.process is None:
            return
        self._send(Shutdown())
        self._outgoing.put(None)
        reaped = self._reap()
        try:
            await asyncio.wait_for(asyncio.shield(reaped), timeout)
        except asyncio.TimeoutError:
            self.process.kill()   # not reaped yet, so the pid is still this process
            await reaped

    def _reap(self) -> asyncio.Future:
        """One thread waits for the process to end (a single joiner: two could race on its pid)."""
        if self._reaped is None:
            self._reaped = asyncio.ensure_future(asyncio.to_thread(self.process.join))
        return self._reaped

    # --- threads -------------------------------------------------------------------------------------
    def _send(self, message) -> None:
        """Encoded here, so that a message that cannot be encoded fails its caller, not the writer thread."""
        self._outgoing.put(self._to_engine.encode(message))

    def _write_loop(self) -> None:
        while (data := self._outgoing.get()) is not None:
            try:
                self._to_engine.send_bytes(data)
            except OSError:
                return

    def _read_loop(self) -> None:
        while True:
            try:
                message = self._from_engine.receive()
            except (EOFError, OSError):
                message = _Exited()
            except DecodeError:   # the engine runs this same code, so this is a bug: say so, keep reading
                log.exception("the engine of %s sent bytes that are not a message", self.name)
                continue
            try:
                self._loop.call_soon_threadsafe(self._on_message, message)
            except RuntimeError:  # the loop is closed: the daemon is exiting
                return
            if isinstance(message, _Exited):
                return

    # --- on the event loop ---------------------------------------------------------------------------
    def _on_message(self, message) -> None:
        try:
            self._handle(message)
        except Exception:  # noqa: BLE001 - a bug here must fail the requests, not leave them hanging
            log.exception("processing a message of the engine of %s failed", self.name)
            error = APIError(500, "Internal error while processing the engine's output.", code="internal_error")
            for request in list(self._requests.values()):
                request.queue.put_nowait(error)
                self.abort(request)

    def _handle(self, message) -> None:
        if isinstance(message, StepOutput):
            self.stats = message.stats
            if message.events:
                self._route(message.events)
            for embedding in message.embeddings:
                request = self._requests.pop(embedding.request_id, None)
                if request is not None:
                    request.queue.put_nowait((request, embedding))
        elif isinstance(message, ModelResolved):
            self._tokenizer = asyncio.ensure_future(asyncio.to_thread(Tokenizer.from_dir, Path(message.model_dir)))
            self._tokenizer.add_done_callback(lambda f: f.cancelled() or f.exception())  # the load may fail first
        elif isinstance(message, Loaded):
            self._on_loaded(message)
        elif isinstance(message, RequestFailed):
            request = self._requests.pop(message.request_id, None)
            if request is not None:
                self.processor.forget(request.request_id)
                request.queue.put_nowait(APIError(400, message.message, code="invalid_prompt")
                                         if message.error_type in ("PromptTooLongError", "ValueError")
                                         else APIError(500, message.message, code="engine_error"))
        elif isinstance(message, LoadFailed):
            self._loaded.set_exception(EngineLoadError(message.error_type, message.message))
        elif isinstance(message, EngineFailed):
            self.failure = message.message
        elif isinstance(message, MessageRefused):
            log.error("the engine of %s refused a message: %s", self.name, message.reason)
        elif isinstance(message, _Exited):
            self._on_exit()

    def _on_loaded(self, message: Loaded) -> None:
        try:
            check_version(message.protocol, "the engine")
        except ProtocolError as e:
            self._loaded.set_exception(EngineLoadError("ProtocolError", str(e)))
            return
        self.info, self.stats = message, message.stats
        self._loaded.set_result(message)

    def _route(self, events) -> None:
        live = []
        for event in events:
            request = self._requests.get(event.request_id)
            if request is not None and event.index not in request.finished:
                live.append(event)
        deltas, stopped_by_text = self.processor.process(live)
        for request_id, index in stopped_by_text:
            self._send(FinishSequence(request_id, index))
        now = time.monotonic()
        for delta in deltas:
            request = self._requests[delta.request_id]
            self._observe(request, delta, now)
            if delta.finish_reason is not None:
                request.finished.add(delta.index)
                if request.done:
                    del self._requests[request.request_id]
                    self.processor.forget(request.request_id)
            request.queue.put_nowait((request, delta))

    def _observe(self, request: EngineRequest, delta: StreamDelta, now: float) -> None:
        if self.metrics is None or not delta.token_ids:
            return
        last = request.last_token_at.get(delta.index)
        if last is None:
            self.metrics.first_token(self.name, now - request.submitted_at)
        else:
            self.metrics.inter_token(self.name, now - last)
        request.last_token_at[delta.index] = now
        self.metrics.generated(self.name, len(delta.token_ids))

    def _gone_error(self) -> APIError:
        detail = f": {self.failure}" if self.failure else ""
        return APIError(503, f"The engine serving model '{self.name}' stopped{detail}. Retry to load it again.",
                        code="engine_unavailable", headers={"Retry-After": "1"})

    def _on_exit(self) -> None:
        self.exited = True
        if self.process is not None:   # reap it, so that no zombie is left behind
            self._reap()
        if not self._loaded.done():
            code = self.process.exitcode if self.process else None
            self._loaded.set_exception(EngineLoadError(
                "EngineError", self.failure or f"the engine process exited while loading (exit code {code})"))
        error = self._gone_error()
        for request in list(self._requests.values()):
            request.queue.put_nowait(error)
        self._requests.clear()
        if self.on_exit is not None:
            self.on_exit(self)
