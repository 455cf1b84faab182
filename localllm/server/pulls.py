"""Pulls run by the daemon: one job per model however many clients ask for it at once, run in a thread of its
own (downloads block), its progress kept as Ollama's progress lines so that every client, whenever it comes,
sees them all from the start. A job goes on when its clients leave: a pull is worth finishing."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from localllm.errors import (CorruptModelError, InvalidModelNameError, LocalLLMError, ModelNotFoundError, PullError,
                             UnsupportedModelError, one_line)
from localllm.hub.progress import Reporter, SilentBar
from localllm.hub.reference import ModelReference

log = logging.getLogger("localllm.server")
PROGRESS_EVERY_S = 0.1   # a file's progress line at most this often (and always its first and last)


def on_loop(loop: asyncio.AbstractEventLoop, function, *args) -> None:
    """Runs `function(*args)` on the daemon's loop, from a pull's thread; nothing once the daemon is exiting."""
    try:
        loop.call_soon_threadsafe(function, *args)
    except RuntimeError:   # the loop is closed
        pass


def failure_status(error: BaseException) -> int:
    """The HTTP status a failed pull answers with: the request's fault (400, 404) or the Hub's (502)."""
    if isinstance(error, (InvalidModelNameError, UnsupportedModelError)):
        return 400
    if isinstance(error, ModelNotFoundError):
        return 404
    if isinstance(error, (PullError, CorruptModelError)):
        return 502
    return 400 if isinstance(error, LocalLLMError) else 500


class PullJob:
    def __init__(self, reference: ModelReference, loop: asyncio.AbstractEventLoop):
        self.reference = reference
        self.events: list[dict] = []          # every progress line so far, the last one {"status": "success"}
        self.error: tuple[int, str] | None = None   # (status, message) when it failed
        self.done = asyncio.Event()
        self._loop = loop
        self._waiters: set[asyncio.Future] = set()

    def post(self, event: dict) -> None:
        """From any thread: one more progress line."""
        on_loop(self._loop, self._add, event)

    def _add(self, event: dict) -> None:
        self.events.append(event)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def finish(self, error: tuple[int, str] | None) -> None:
        self.error = error
        self.done.set()
        self._add({"error": error[1]} if error else {"status": "success", "model": self.reference.name})

    async def follow(self):
        """Every progress line, from the first, until the last one."""
        sent = 0
        while True:
            while sent < len(self.events):
                sent += 1
                yield self.events[sent - 1]
            if self.done.is_set():
                return
            waiter = self._loop.create_future()
            self._waiters.add(waiter)
            await waiter


class _JobReporter(Reporter):
    """The pull's status lines and byte counts as Ollama's progress lines, posted to the job."""

    def __init__(self, job: PullJob):
        self.job = job

    def status(self, message: str) -> None:
        self.job.post({"status": message})

    def bar_class(self, filename: str, size: int | None):
        job = self.job

        class Bar(SilentBar):
            def __init__(self, *args, total=None, initial=0, **kwargs):
                self.total, self.completed, self.posted, self.posted_at = total or size, initial or 0, None, 0.0
                self._post(force=True)

            def update(self, n: int = 1) -> None:
                self.completed += n or 0
                self._post(force=self.total is not None and self.completed >= self.total)

            def close(self) -> None:
                self._post(force=True)

            def _post(self, force: bool) -> None:
                now, state = time.monotonic(), (self.completed, self.total)
                if state != self.posted and (force or now - self.posted_at >= PROGRESS_EVERY_S):
                    self.posted, self.posted_at = state, now
                    job.post({"status": f"pulling {filename}", "digest": filename, "total": self.total,
                              "completed": self.completed})

        return Bar


class Pulls:
    """The daemon's pulls in flight, by the name the model is stored under."""

    def __init__(self):
        self.jobs: dict[str, PullJob] = {}

    def start(self, reference: ModelReference) -> PullJob:
        key = f"{reference.name.lower()}@{reference.revision}"
        job = self.jobs.get(key)
        if job is not None:
            return job
        loop = asyncio.get_running_loop()
        job = self.jobs[key] = PullJob(reference, loop)
        threading.Thread(target=self._run, args=(key, job, loop), name=f"pull[{reference.name}]",
                         daemon=True).start()   # a daemon thread: stopping the daemon leaves a resumable download
        return job

    def _run(self, key: str, job: PullJob, loop: asyncio.AbstractEventLoop) -> None:
        from localllm.hub.pull import pull_reference

        error = None
        try:
            pull_reference(job.reference, _JobReporter(job))
        except Exception as e:  # noqa: BLE001 - any failure is the clients' one-line error, never a dead thread
            error = (failure_status(e), one_line(e))
            if error[0] == 500:
                log.exception("the pull of %s failed", job.reference.name)
        on_loop(loop, self._finish, key, job, error)   # after every line the pull posted

    def _finish(self, key: str, job: PullJob, error: tuple[int, str] | None) -> None:
        if self.jobs.get(key) is job:
            del self.jobs[key]
        job.finish(error)
