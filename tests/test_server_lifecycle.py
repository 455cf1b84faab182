"""Starting, finding, stopping and killing the daemon; keep-alive unloading and loading state; the
`serve` and `stop` verbs."""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from daemon_helpers import TINY_ENGINE, running_daemon, stop_process_group, wait_gone
from localllm.cli.main import app
from localllm.client import Client, DaemonError, ensure_daemon, find_daemon, stop_daemon
from localllm.server.state import DaemonState, default_state_path, read_state, write_state
from tiny_models import build_model_dir

ENGINE_ARGS = [a for item in TINY_ENGINE for a in ("--engine", item)]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_model_dir("mistral", tmp_path_factory.mktemp("models") / "tiny-mistral"))


@contextlib.contextmanager
def background_daemon(tiny, **kwargs):
    """ensure_daemon() as the CLI would call it (default state file), always torn down."""
    pids = []
    try:
        client = ensure_daemon(port=0, models=[tiny], args=ENGINE_ARGS, timeout=90, **kwargs)
        pids.append(find_daemon().pid)
        yield client, pids
    finally:
        with contextlib.suppress(DaemonError, OSError):
            stop_daemon()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def chat(client: Client, model: str, **extra) -> dict:
    return client.chat(model, [{"role": "user", "content": "hi"}], max_tokens=3, ignore_eos=True, **extra)


def engine_pids(client: Client) -> list[int]:
    return [m["pid"] for m in client.status()["models"]]


def ready_models(client: Client, count: int, timeout: float = 90.0) -> list[dict]:
    """The daemon's models once `count` of them are loaded and ready."""
    deadline = time.monotonic() + timeout
    while True:
        models = client.status()["models"]
        if len(models) == count and all(m["state"] == "ready" for m in models):
            return models
        assert time.monotonic() < deadline, f"models not ready within {timeout:.0f} s: {models}"
        time.sleep(0.05)


def test_ensure_daemon_starts_one_in_the_background_and_reuses_it(tiny):
    assert find_daemon() is None
    with background_daemon(tiny) as (client, pids):
        path = default_state_path()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        state = read_state(path)
        assert state.pid == pids[0] and state.url == client.url and state.url.startswith("http://127.0.0.1:")
        again = ensure_daemon(port=0, models=[tiny], args=ENGINE_ARGS)
        assert again.url == client.url and find_daemon().pid == pids[0]   # no second daemon
        assert chat(again, tiny)["usage"]["completion_tokens"] == 3
        engines = engine_pids(client)
        stopped = stop_daemon()
        assert stopped.pid == pids[0]
        assert wait_gone(pids[0]) and all(wait_gone(pid) for pid in engines)
        assert not path.exists() and find_daemon() is None


def test_a_sigkilled_daemon_leaves_stale_state_that_is_cleaned_and_replaced(tiny):
    with background_daemon(tiny) as (client, pids):
        # ensure_daemon returns once the daemon answers; an engine still loading (importing torch, which takes
        # long on a busy machine) would only look at its pipe after the load, so the kill waits for it
        engines = [m["pid"] for m in ready_models(client, 1)]
        os.kill(pids[0], signal.SIGKILL)
        assert wait_gone(pids[0])
        # the engines notice their daemon is gone (end of file on the pipe) and exit; the timeout only bounds
        # the wait, which ends as soon as they are gone
        assert all(wait_gone(pid, 60) for pid in engines)
        assert read_state(default_state_path()).pid == pids[0]   # stale: the pid is gone
        assert find_daemon() is None and not default_state_path().exists()
        fresh = ensure_daemon(port=0, models=[tiny], args=ENGINE_ARGS, timeout=90)
        pids.append(find_daemon().pid)
        assert pids[1] != pids[0]
        assert chat(fresh, tiny)["usage"]["completion_tokens"] == 3


def test_state_whose_port_does_not_answer_is_stale(tmp_path):
    path = tmp_path / "daemon.json"
    # a live pid (ours) but nothing of ours listening: a reused pid, or a daemon hung before it served
    write_state(path, DaemonState(pid=os.getpid(), url="http://127.0.0.1:9", host="127.0.0.1", port=9,
                                  started_at="2026-01-01T00:00:00Z"))
    assert find_daemon(path) is None and not path.exists()
    path.write_text("{not json")
    assert find_daemon(path) is None and not path.exists()


def test_keep_alive_unloads_idle_models_and_loading_state_is_visible(tiny, tmp_path):
    with running_daemon(tmp_path, models=[tiny], args=["--keep-alive", "1"]) as daemon:
        model = daemon.model_status(tiny)
        assert model["keep_alive_s"] == 1 and model["keep_alive_until"] is not None
        daemon.wait_until(lambda s: not s["models"], 10, "the idle model to be unloaded")
        client = daemon.client()
        result = {}
        thread = threading.Thread(target=lambda: result.update(chat(client, tiny, keep_alive=-1)))
        thread.start()
        loading = daemon.wait_until(lambda s: s["models"], 10, "the model to appear")["models"][0]
        assert loading["state"] == "loading" and loading["name"] == tiny and "context_length" not in loading
        thread.join(60)
        assert result["usage"]["completion_tokens"] == 3
        model = daemon.model_status(tiny)
        assert model["state"] == "ready" and model["keep_alive_forever"] and model["keep_alive_until"] is None
        time.sleep(1.5)   # past the 1 s keep-alive: what is checked is that nothing happens, so no condition to wait for
        assert daemon.model_status(tiny)["state"] == "ready"   # kept: the request asked for forever
        assert chat(client, tiny, keep_alive=0)["usage"]["completion_tokens"] == 3
        daemon.wait_until(lambda s: not s["models"], 5, "the keep_alive 0 unload")
        assert chat(client, tiny, keep_alive=30)["usage"]["completion_tokens"] == 3
        pid = daemon.model_status(tiny)["pid"]
        assert client.unload(tiny) == {"model": tiny, "state": "unloaded"}
        assert not client.status()["models"] and wait_gone(pid)
        with pytest.raises(DaemonError) as refused:
            client.unload(tiny)
        assert refused.value.status == 404


def test_serve_and_stop_verbs(tiny, tmp_path):
    result = runner.invoke(app, ["stop"])
    assert result.exit_code == 0 and "no daemon is running" in result.stdout
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"], env={"LOCALLLM_API_KEY": ""})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("Error:") and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["serve", "--engine", "no_such_setting=1"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: engine setting")
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "localllm.cli.main", "serve", "--port", "0", "--model", tiny,
                              *ENGINE_ARGS], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while find_daemon() is None:
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        assert find_daemon().pid == serve.pid
        with Client(find_daemon().url) as client:
            assert tiny in client.models()
        second = subprocess.run([sys.executable, "-m", "localllm", "serve", "--port", "0"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "already running" in second.stderr
        # a daemon of another home on the same port: named, not just "Address already in use"
        port = find_daemon().url.rsplit(":", 1)[1]
        other_home = subprocess.run([sys.executable, "-m", "localllm", "serve", "--port", port],
                                    capture_output=True, text=True, timeout=60,
                                    env={**os.environ, "LOCALLLM_HOME": str(tmp_path / "other-home")})
        assert other_home.returncode == 1, other_home.stderr
        assert f"another localllm daemon (pid {serve.pid}), of another LOCALLLM_HOME" in other_home.stderr
        result = runner.invoke(app, ["stop"])
        assert result.exit_code == 0 and f"pid {serve.pid}" in result.stdout
        assert serve.wait(30) == 0
        assert not default_state_path().exists()
    finally:
        stop_process_group(serve)
        log.close()


def test_models_known_to_the_store_are_loadable_by_name(tiny, tmp_path, monkeypatch):
    from localllm.hub import store

    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))   # a store of its own, inherited by the daemon
    store.save(store.ModelEntry(name="tiny:local", source="local", path=tiny, size=1, format="F32",
                                modified="2026-01-01T00:00:00Z"))
    with running_daemon(tmp_path / "daemon") as daemon:   # started with no --model at all
        client = daemon.client()
        assert "tiny:local" in client.models()
        assert chat(client, "tiny:local")["model"] == "tiny:local"
        assert daemon.model_status("tiny:local")["state"] == "ready"
        with pytest.raises(DaemonError) as refused:
            chat(client, tiny)   # the same files, named by path, were not allowed
        assert refused.value.status == 404
