"""The one way the CLI, the TUI and the tests reach the daemon: find it from its state file, start it in the
background when needed, and call its HTTP API (httpx). httpx is imported by the calls that use it: a cold
`localllm run` starts the daemon before it needs it (~50 ms sooner)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from localllm import settings
from localllm.errors import LocalLLMError
from localllm.hub.paths import data_dir, open_private
from localllm.server.state import DaemonState, default_state_path, live_daemon, pid_alive, read_state, remove_state

if TYPE_CHECKING:
    import httpx

LOG_NAME = "daemon.log"


class DaemonError(LocalLLMError):
    """The daemon could not be reached or started, or it refused a request (`status` is the HTTP status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0):
        import httpx

        self.url = url.rstrip("/")
        api_key = api_key if api_key is not None else settings.api_key()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=5.0))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def health(self) -> dict:
        return self._json("GET", "/health")

    def status(self) -> dict:
        """What /api/status says: models and their state, KV blocks, queue, tokens/s, memory."""
        return self._json("GET", "/api/status")

    def models(self) -> list[str]:
        return [m["id"] for m in self._json("GET", "/v1/models")["data"]]

    def tags(self) -> list[dict]:
        """The models whose files are here, with size and details (Ollama's /api/tags entries)."""
        return self._json("GET", "/api/tags")["models"]

    def pull(self, model: str, revision: str = "main") -> Iterator[dict]:
        """The daemon's progress lines while it pulls `model` (Ollama's: {status}, or {status, digest, total,
        completed} for a file), the last one {"status": "success", "model": the name it is stored under}. A
        failure raises DaemonError. Another client pulling the same model shares the download; leaving early
        leaves the pull running in the daemon."""
        import httpx

        body = {"model": model, "revision": revision}
        patient = httpx.Timeout(None, connect=5.0)   # no read timeout: hashing a large file sends nothing a while
        try:
            with self.http.stream("POST", "/api/pull", json=body, timeout=patient) as response:
                if response.status_code != 200:
                    response.read()
                    raise _refusal(response)
                for line in response.iter_lines():
                    if line.strip():
                        event = json.loads(line)
                        if "error" in event:
                            raise DaemonError(str(event["error"]))
                        yield event
        except httpx.HTTPError as e:
            raise DaemonError(f"lost the daemon at {self.url}: {e}") from None

    def unload(self, model: str) -> dict:
        return self._json("POST", "/api/unload", json={"model": model})

    def load(self, model: str) -> dict:
        """Loads `model` (returns at once when it is loaded), as Ollama does for a request with no prompt: so that
        a client can time loading apart from the first token."""
        return self._json("POST", "/api/generate", json={"model": model, "stream": False})

    def chat(self, model: str, messages: list[dict], **params) -> dict:
        return self._json("POST", "/v1/chat/completions", json={"model": model, "messages": messages, **params})

    def completion(self, model: str, prompt: str | list[int], **params) -> dict:
        """/v1/completions of one prompt (text, or token ids)."""
        return self._json("POST", "/v1/completions", json={"model": model, "prompt": prompt, **params})

    def chat_stream(self, model: str, messages: list[dict], **params) -> Iterator[dict]:
        """The answer's chunks (OpenAI chat.completion.chunk dicts) as they arrive; closing the iterator early
        aborts the request in the daemon."""
        import httpx

        body = {"model": model, "messages": messages, **params, "stream": True}
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise _refusal(response)
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise DaemonError(chunk["error"].get("message", "the daemon failed"))
                    yield chunk
        except httpx.HTTPError as e:
            raise DaemonError(f"lost the daemon at {self.url}: {e}") from None

    def pull_to_end(self, model: str, revision: str = "main", on_progress=lambda event: None) -> dict:
        """Pulls `model` through the daemon, handing each progress line but the last to `on_progress`; returns
        the pulled model's /api/tags entry ({"name": ...} alone if it has none)."""
        for event in self.pull(model, revision):
            if event.get("status") == "success":
                name = event.get("model") or model
                return next((m for m in self.tags() if m["name"] == name), {"name": name})
            on_progress(event)
        raise DaemonError(f"the daemon ended the pull of {model} without saying it succeeded")

    def _json(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise DaemonError(f"cannot reach the daemon at {self.url}: {e}") from None
        if response.status_code >= 400:
            raise _refusal(response)
        return response.json()


def model_text(model: dict) -> str:
    """A model's /api/tags entry as a line shows it: its name, with its size and quantization when known."""
    from localllm.units import format_size

    size, details = model.get("size"), model.get("details") or {}
    return model["name"] + (f" ({format_size(size)}, {details.get('quantization_level')})" if size else "")


def _refusal(response: httpx.Response) -> DaemonError:
    """The daemon's error, in OpenAI's shape ({"error": {"message"}}) or on the Ollama API in Ollama's."""
    try:
        error = response.json()["error"]
        message = error if isinstance(error, str) else error["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or f"HTTP {response.status_code}"
    return DaemonError(message, response.status_code)


def find_daemon(state_file: Path | None = None) -> DaemonState | None:
    """The running daemon, if any (stale state from a killed one is cleaned up on the way)."""
    return live_daemon(state_file or default_state_path())


def ensure_daemon(*, host: str | None = None, port: int | None = None, models: list[str] = (),
                  args: list[str] = (), state_file: Path | None = None, api_key: str | None = None,
                  timeout: float = 60.0, log_file: Path | None = None) -> Client:
    """A client of the running daemon, starting one in the background first if none runs: at HOST:PORT, by
    default where $LOCALLLM_HOST says (localllm.settings)."""
    state_file = state_file or default_state_path()
    state = find_daemon(state_file)
    if state is None:
        address = settings.daemon_address()
        process, log_file = spawn_daemon(host=host or address.host, port=address.port if port is None else port,
                                         models=models, args=args, state_file=state_file, api_key=api_key,
                                         log_file=log_file)
        state = wait_for_daemon(process, state_file, timeout, log_file)
    return Client(state.url, api_key)


def spawn_daemon(*, host: str, port: int, models: list[str] = (), args: list[str] = (),
                 state_file: Path | None = None, api_key: str | None = None,
                 log_file: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """Starts `localllm serve` detached (its own session, output to a log file)."""
    state_file = state_file or default_state_path()
    log_file = log_file or data_dir() / LOG_NAME
    command = [sys.executable, "-m", "localllm", "serve", "--host", host, "--port", str(port),
               "--state-file", str(state_file), "--log-file", str(log_file)]
    for model in models:
        command += ["--model", model]
    command += list(args)
    # the key travels in the environment, not on the command line, where ps would show it
    env = settings.child_environment(**({settings.API_KEY.name: api_key} if api_key else {}))
    with open_private(log_file) as log:   # what it prints before its own logging is set up, or if it crashes
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True, env=env)
    return process, log_file


def wait_for_daemon(process: subprocess.Popen, state_file: Path, timeout: float, log_file: Path) -> DaemonState:
    """Waits until the daemon records its address and answers /health."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = live_daemon(state_file) if state_file.exists() else None
        exited = process.poll() is not None
        if state is not None and (state.pid == process.pid or exited):   # ours, or one that won a race
            return state
        if exited:
            raise DaemonError(_why_it_exited(process.returncode, log_file))
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise DaemonError(f"the daemon did not answer within {timeout:.0f} s (log: {log_file})")


def _why_it_exited(returncode: int, log_file: Path) -> str:
    """The daemon's own one-line error from its log (without its "Error: ", which the CLI adds again), else its last
    line and where the log is."""
    try:
        lines = [l for l in log_file.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        lines = []
    errors = [l.removeprefix("Error:").strip() for l in lines if l.startswith("Error:")]
    if errors:
        return f"the daemon could not start: {errors[-1]}"
    return f"the daemon exited at start (code {returncode}): {lines[-1] if lines else 'no output'} (log: {log_file})"


def stop_daemon(state_file: Path | None = None, timeout: float = 15.0) -> DaemonState | None:
    """Stops the running daemon (SIGTERM: it unloads its models and removes its state file). Returns what was
    stopped, or None if none was running."""
    state_file = state_file or default_state_path()
    state = find_daemon(state_file)
    if state is None:
        return None
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(state.pid):
        if time.monotonic() > deadline:
            os.kill(state.pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)
    remove_state(state_file, state.pid)
    return state


__all__ = ["Client", "DaemonError", "ensure_daemon", "find_daemon", "read_state", "spawn_daemon",
           "stop_daemon", "wait_for_daemon"]
