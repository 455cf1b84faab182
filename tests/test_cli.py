"""`localllm run` through the daemon it starts in the background (Ollama-style), in-process (Typer's CliRunner)
and as a real subprocess. Every daemon a test starts is stopped (or killed) by the `daemons` fixture."""
import contextlib
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from daemon_helpers import wait_gone
from fake_hub import hub, tiny_model_dir  # noqa: F401 (hub is a fixture)
from localllm.cli.main import app
from localllm.client import DaemonError, find_daemon, stop_daemon
from tiny_models import build_model_dir

QUESTION = "What is the capital of France?"
runner = CliRunner()


@pytest.fixture
def daemons(monkeypatch):
    """`run` starts its daemon on any free port ($LOCALLLM_HOST); the daemons seen are taken down at the end."""
    monkeypatch.setenv("LOCALLLM_HOST", "127.0.0.1:0")
    assert find_daemon() is None
    pids = []

    def seen() -> int:
        pid = find_daemon().pid
        pids.append(pid)
        return pid

    yield seen
    with contextlib.suppress(DaemonError, OSError):
        stop_daemon()
    for pid in pids:   # a killed daemon's engines exit on their own; make sure of it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _one_line_error(result) -> None:
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr


def test_help_lists_each_verb_on_one_line_in_the_order_a_newcomer_needs():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    rows = [line.strip("│ ").split(None, 1) for line in result.stdout.splitlines()
            if line.startswith("│ ") and not line.startswith("│ --")]
    assert [verb for verb, _ in rows] == ["run", "chat", "pull", "list", "show", "cp", "rm", "ps", "stop", "serve",
                                         "bench"]
    assert all(summary.rstrip(" │").endswith(".") for _, summary in rows), rows   # no summary wraps onto a 2nd line


def test_run_starts_the_daemon_and_answers_with_the_embedded_model(daemons):
    result = subprocess.run([sys.executable, "-m", "localllm.cli.main", "run", QUESTION], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    pid = daemons()   # left running in the background, as Ollama does
    result = runner.invoke(app, ["run", QUESTION, "--verbose", "--kv-cache-dtype", "fp8"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    assert "time to first token" in result.stderr and "started the daemon" not in result.stderr
    # an engine option cannot change the running daemon: said in one line, not silently dropped
    assert "already running, so --kv-cache-dtype did not apply" in result.stderr
    assert daemons() == pid   # the same daemon answered
    # unloaded, the model is loaded again before the prompt is sent: its load is not counted in the first token
    assert runner.invoke(app, ["stop", "smollm2:135m"]).exit_code == 0
    result = runner.invoke(app, ["run", QUESTION, "--verbose"])
    assert result.exit_code == 0 and "Paris" in result.stdout, result.output
    timings = dict(line.split(":", 1) for line in result.stderr.splitlines() if ":" in line)
    seconds = {name: float(value.split()[0]) * (1 if value.split()[1] == "s" else 1e-3)
               for name, value in timings.items() if name in ("load duration", "time to first token")}
    assert seconds["load duration"] > seconds["time to first token"], result.stderr   # an engine process started


def test_a_sigkilled_daemon_is_detected_and_restarted_by_the_next_run(daemons, tmp_path):
    tiny = str(build_model_dir("qwen2", tmp_path / "tiny-qwen2"))
    result = runner.invoke(app, ["run", tiny, "hi", "--max-tokens", "3", "--verbose"])
    assert result.exit_code == 0, result.output
    assert "started the daemon" in result.stderr
    first = daemons()
    os.kill(first, signal.SIGKILL)
    assert wait_gone(first)
    result = runner.invoke(app, ["run", tiny, "hi", "--max-tokens", "3", "--verbose"])
    assert result.exit_code == 0, result.output
    assert "started the daemon" in result.stderr
    assert daemons() != first


def test_run_pulls_a_missing_model_first_without_asking(hub, daemons, tmp_path_factory):
    """Through the daemon it starts, which knows the alias table: the fake Hub serves a tiny model under the
    repo id of a real alias."""
    from localllm.hub import store
    from localllm.hub.aliases import ALIASES

    alias = "qwen3:0.6b"
    hub.add_dir(ALIASES[alias], tiny_model_dir(tmp_path_factory))
    result = runner.invoke(app, ["run", alias, "hi", "--max-tokens", "3"])   # stdin is not a terminal
    assert result.exit_code == 0, result.output
    assert f"{alias} is not here yet: pulling it" in result.stderr and "verifying sha256 digest" in result.stderr
    assert store.find(alias) is not None
    daemons()
    result = runner.invoke(app, ["run", alias, "hi", "--max-tokens", "3"])
    assert result.exit_code == 0 and "pulling" not in result.stderr, result.output
    assert hub.fetched(ALIASES[alias], "model.safetensors", "GET") == [None]


def test_unknown_model_is_a_one_line_error():
    _one_line_error(runner.invoke(app, ["run", "/nonexistent/model", "hi"]))
    _one_line_error(runner.invoke(app, ["run", "no-such-model", "hi"]))
    assert find_daemon() is None   # refused before any daemon was started


def test_invalid_sampling_value_is_a_one_line_error():
    _one_line_error(runner.invoke(app, ["run", "hi", "--temperature", "-1"]))
    assert find_daemon() is None


def test_a_port_another_program_holds_is_said_in_one_line(monkeypatch, tmp_path):
    """Not "the daemon exited (code 1): Error: ...[Errno 98]": what holds the port, and what to do about it."""
    import socket

    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    with socket.socket() as other:   # a program that is not localllm
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        monkeypatch.setenv("LOCALLLM_HOST", f"127.0.0.1:{port}")
        result = runner.invoke(app, ["run", QUESTION])
    _one_line_error(result)
    assert result.stderr.strip() == (f"Error: the daemon could not start: cannot listen on 127.0.0.1:{port}: another "
                                     "program is listening there; give this daemon another address (--host/--port, "
                                     "LOCALLLM_HOST)")
    assert find_daemon() is None
