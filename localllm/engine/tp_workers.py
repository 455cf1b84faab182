"""Rank 0's side of tensor parallelism: starting one worker process per other rank, watching them, and stopping
them. A worker that dies takes the engine down: the watchdog stops the other workers and calls `on_failure`
(the daemon's engine process exits, so the front end answers 503 and loads the model again on the next request;
the offline API aborts the process group, so that the step waiting on the dead rank fails instead of hanging)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import msgspec

from localllm.engine.step_channel import open_step_pipe
from localllm.engine.tp_worker import WorkerFailed, WorkerSpec
from localllm.errors import LocalLLMError

STOP_TIMEOUT_S = 10.0
WATCH_EVERY_S = 0.2
FAILURE_GRACE_S = 2.0   # a collective can fail (peer gone) a moment before its process is seen to exit


class WorkerDiedError(LocalLLMError):
    pass


def rank_device(device, rank: int) -> str:
    return f"cuda:{rank}" if device.type == "cuda" else "cpu"


def abort_process_group() -> None:
    """Makes collectives blocked on a dead peer fail (NCCL would otherwise wait for its timeout), and kernels
    waiting for a dead peer's partial sums (layers/peer_exchange.py) go on."""
    import torch.distributed as dist

    from localllm.layers.peer_exchange import abandon_peer_waits

    abandon_peer_waits()
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    with contextlib.suppress(Exception):
        if abort is not None and dist.is_initialized():
            abort()


class TPWorkers:
    def __init__(self, world_size: int, port: int, device, dtype, config, hf_config, model_dir,
                 num_threads: int, on_failure: Callable[[str], None] | None = None):
        self.on_failure = on_failure or (lambda message: abort_process_group())
        self.failure: str | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._status_read, status_write = os.pipe()
        fields = dataclasses.asdict(config)
        self.processes: list[subprocess.Popen] = []
        self.step_fds: list[int] = []   # the write end of each worker's step pipe (step_channel.py)
        try:
            for rank in range(1, world_size):
                step_read, step_write = open_step_pipe()
                self.step_fds.append(step_write)
                spec = WorkerSpec(rank, world_size, port, os.getpid(), rank_device(device, rank),
                                  str(dtype).removeprefix("torch."), num_threads,
                                  str(model_dir) if model_dir is not None else None, hf_config.to_dict(), fields,
                                  status_write, step_read)
                try:
                    process = subprocess.Popen([sys.executable, "-m", "localllm.engine.tp_worker"],
                                               stdin=subprocess.PIPE, pass_fds=(status_write, step_read))
                finally:
                    os.close(step_read)
                process.stdin.write(msgspec.json.encode(spec))
                process.stdin.close()
                self.processes.append(process)
        except BaseException:
            self.kill()
            raise
        finally:
            os.close(status_write)
        threading.Thread(target=self._watch, name="tp-watchdog", daemon=True).start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def check(self) -> None:
        """Raises WorkerDiedError once a worker has died."""
        if self.failure is not None:
            raise WorkerDiedError(self.failure)

    def _watch(self) -> None:
        while not self._stopping and not self._poll():
            self._wakeup.wait(WATCH_EVERY_S)

    def wait_for_failure(self, timeout: float = FAILURE_GRACE_S) -> str | None:
        """After a collective failed: the failure of a worker that exits within `timeout`, else None."""
        deadline = time.monotonic() + timeout
        while self.failure is None and time.monotonic() < deadline and not self._poll():
            time.sleep(WATCH_EVERY_S / 4)
        return self.failure

    def _poll(self) -> bool:
        """Whether a worker has died (recording it and acting on it the first time)."""
        for rank, process in enumerate(self.processes, start=1):
            code = process.poll()
            if code is not None and not self._stopping:
                self._fail(rank, process, code)
                return True
        return self.failure is not None

    def _fail(self, rank: int, process: subprocess.Popen, code: int) -> None:
        with self._lock:
            if self.failure is not None:
                return
            reported = self._reported_failure()
            self.failure = reported or f"tensor-parallel worker rank {rank} (pid {process.pid}) exited with code {code}"
        self.kill()
        self.on_failure(self.failure)

    def _reported_failure(self) -> str | None:
        """The one-line failure a worker wrote before exiting, if any."""
        os.set_blocking(self._status_read, False)
        try:
            line = os.read(self._status_read, 1 << 16).split(b"\n")[0]
            return msgspec.json.decode(line, type=WorkerFailed).message if line else None
        except (OSError, msgspec.DecodeError):
            return None

    def stop(self, send_stop: Callable[[], None] | None) -> None:
        """Asks the workers to exit (send_stop broadcasts the stop command), then kills those that do not."""
        self._stopping = True
        self._wakeup.set()
        if send_stop is not None and self.failure is None:
            with contextlib.suppress(Exception):
                send_stop()
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(OSError):
            os.close(self._status_read)

    def kill(self) -> None:
        self._stopping = True
        self._wakeup.set()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()
