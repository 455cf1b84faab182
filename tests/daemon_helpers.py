"""Real daemons for tests: `localllm serve` on a free loopback port (port 0), started through
localllm.client like the CLI does, and always taken down, engine processes included."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from localllm.client import Client, spawn_daemon, wait_for_daemon
from localllm.server.state import DaemonState, pid_alive

TINY_ENGINE = ["block_size=4", "num_kv_blocks=128", "num_threads=1"]


@dataclass
class Daemon:
    process: object
    state: DaemonState
    log_file: Path
    api_key: str | None = None
    _status_client: Client | None = None

    @property
    def url(self) -> str:
        return self.state.url

    def client(self) -> Client:
        return Client(self.url, self.api_key, timeout=120)

    def http(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        kwargs.setdefault("timeout", 120)
        return httpx.Client(base_url=self.url, headers=headers, **kwargs)

    def openai(self):
        from openai import OpenAI
        return OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key or "unused", max_retries=0, timeout=300)

    def status(self) -> dict:
        if self._status_client is None:
            self._status_client = self.client()
        return self._status_client.status()

    def model_status(self, name: str) -> dict | None:
        return next((m for m in self.status()["models"] if m["name"] == name), None)

    def wait_until(self, predicate, timeout: float = 30.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last status: {status}")
            time.sleep(0.05)

    def requests_answered(self, endpoint: str) -> int:
        """How many requests to `endpoint` the daemon has answered, by its /metrics (any status)."""
        from prometheus_client.parser import text_string_to_metric_families

        with self.http() as http:
            text = http.get("/metrics").text
        return int(sum(sample.value for family in text_string_to_metric_families(text)
                       for sample in family.samples
                       if sample.name == "localllm_requests_total" and sample.labels["endpoint"] == endpoint))

    def wait_for_requests(self, endpoint: str, count: int, timeout: float = 60.0) -> None:
        """Until the daemon has answered `count` requests to `endpoint` in all."""
        deadline = time.monotonic() + timeout
        while (answered := self.requests_answered(endpoint)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {count} requests to {endpoint}; {answered} so far")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@contextlib.contextmanager
def running_daemon(directory: Path, models: list[str] = (), engine: list[str] = TINY_ENGINE, args: list[str] = (),
                   api_key: str | None = None, wait_ready: bool = True, state_file: Path | None = None,
                   log_file: Path | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    state_file = state_file or directory / "daemon.json"
    log_file = log_file or directory / "daemon.log"
    extra = [a for item in engine for a in ("--engine", item)] + list(args)
    process, _ = spawn_daemon(host="127.0.0.1", port=0, models=models, args=extra, state_file=state_file,
                              api_key=api_key, log_file=log_file)
    try:
        state = wait_for_daemon(process, state_file, 90, log_file)
        daemon = Daemon(process, state, log_file, api_key)
        if wait_ready and models:
            daemon.wait_until(lambda s: len(s["models"]) == len(models)
                              and all(m["state"] == "ready" for m in s["models"]), 90, "models to load")
        yield daemon
        if daemon._status_client is not None:
            daemon._status_client.close()
    finally:
        stop_process_group(process)


def stop_process_group(process, timeout: float = 15.0) -> None:
    """SIGTERM the daemon (it stops its engines), then SIGKILL whatever of its session is left. The daemon is
    reaped only at the end, so its pid (the group's id) cannot be reused meanwhile."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)   # start_new_session: the engines share the daemon's group
    process.wait(10)


@contextlib.contextmanager
def frozen_engine(pid):
    """SIGSTOPs an engine process (tiny models generate hundreds of tokens a second, so a request could end
    before the test acts on it); the front end keeps answering meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

