"""A real `localllm serve` for the reliability suite: started as a separate process on 127.0.0.1 with a free
port and its own LOCALLLM_HOME, driven over HTTP only, and always taken down with its engine processes."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from localllm import settings

EMBEDDED = "smollm2:135m"


def localllm_command() -> list[str]:
    """The `localllm` entry point installed beside this Python, else the one on PATH."""
    beside = Path(sys.executable).with_name("localllm")
    found = str(beside) if beside.exists() else shutil.which("localllm")
    if found is None:
        raise RuntimeError("the `localllm` command is not installed (pip install -e .)")
    return [found]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of every localllm process the suite starts: its own home and none of the other
    variables localllm honours (key, daemon address, keep-alive, queue, Hub settings), so that the user's
    setup cannot change a figure."""
    dropped = {variable.name for variable in settings.VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, "LOCALLLM_HOME": str(home), **extra}


def run_cli(home: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
            **popen) -> subprocess.CompletedProcess:
    return subprocess.run(localllm_command() + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(home), stdin=subprocess.DEVNULL, **popen)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    """Polls until `predicate()` is truthy and returns it; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class LocalServer:
    """`localllm serve --port 0` in its own session (so its engines can be found and stopped as a group)."""

    def __init__(self, home: Path, args: list[str] = (), api_key: str | None = None):
        self.home = Path(home)
        self.api_key = api_key
        self.args = list(args)
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log_path = self.home / "serve.log"

    @property
    def state_file(self) -> Path:
        return self.home / "daemon.json"

    def start(self, timeout: float = 120) -> "LocalServer":
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.unlink(missing_ok=True)
        command = localllm_command() + ["serve", "--host", "127.0.0.1", "--port", "0"] + self.args
        env = clean_env(self.home, **({"LOCALLLM_API_KEY": self.api_key} if self.api_key else {}))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                            start_new_session=True)
        state = wait_for(self._state, timeout, "the daemon to listen")
        self.url = state["url"]
        return self

    def _state(self) -> dict | None:
        if self.exited():
            raise RuntimeError(f"localllm serve exited early: {self.log()[-2000:]}")
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if state.get("pid") == self.process.pid else None

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (the daemon unloads its models), then SIGKILL whatever is left of its session. The daemon
        is reaped last, so that its pid (the group's id) cannot be reused by another process meanwhile."""
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: self.exited(), timeout, "the daemon to stop", interval=0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def exited(self) -> bool:
        """Whether the daemon has exited, without reaping it."""
        if self.process.returncode is not None:
            return True
        return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def __enter__(self) -> "LocalServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http(self, timeout: float = 300, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout, **kwargs)

    def async_http(self, timeout: float = 300, **kwargs) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(), timeout=timeout, **kwargs)

    def status(self) -> dict:
        with self.http(timeout=30) as client:
            response = client.get("/api/status")
        response.raise_for_status()
        return response.json()

    def model(self, name: str = EMBEDDED) -> dict | None:
        return next((m for m in self.status()["models"] if m["name"] == name), None)

    def alive(self) -> bool:
        try:
            with httpx.Client(base_url=self.url, timeout=10) as client:
                return client.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def load(self, name: str = EMBEDDED, timeout: float = 300) -> dict:
        """Loads `name` with a one-token request and returns its status entry."""
        chat(self, "Hi", max_tokens=1, model=name, timeout=timeout)
        return wait_for(lambda: (m := self.model(name)) and m["state"] == "ready" and m, 60, f"{name} ready")

    def wait_idle(self, timeout: float = 30) -> float:
        """Seconds until no request runs or waits and no KV block is held (raises TimeoutError if never)."""
        start = time.monotonic()
        wait_for(lambda: _idle(self.status()), timeout, "running requests and used KV blocks to reach 0")
        return time.monotonic() - start


def _idle(status: dict) -> bool:
    return status["running"] == 0 and status["waiting"] == 0 and status["kv_blocks"]["used"] == 0


def chat(server: LocalServer, content: str, max_tokens: int = 8, model: str = EMBEDDED, timeout: float = 300,
         **fields) -> dict:
    """One non-streaming chat completion that must succeed; returns the response body."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **fields}
    with server.http(timeout=timeout) as client:
        response = client.post("/v1/chat/completions", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"chat completion answered {response.status_code}: {response.text[:300]}")
    return response.json()
