"""Faults: an engine process SIGKILLed while it serves streams (what the clients get, how long until the
model answers again), and the daemon SIGKILLed, then `localllm run` (it must start a new daemon and answer)."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import time

from localllm.server.state import pid_alive
from reliability_checks.report import Section
from reliability_checks.server import EMBEDDED, LocalServer, clean_env, run_cli, wait_for
from reliability_checks.streams import chat_body, stream_chat


def engine_kill(server: LocalServer, streams: int = 4, command: str = "") -> Section:
    section = Section(f"faults: engine SIGKILL under {streams} streams", command)
    engine_pid = server.load()["pid"]

    async def run():
        async with server.async_http() as http:
            tasks = [asyncio.create_task(stream_chat(http, chat_body(EMBEDDED, f"Count to a thousand, {i}:", 2000,
                                                                     ignore_eos=True))) for i in range(streams)]
            await asyncio.to_thread(wait_for, lambda: server.status()["running"] >= streams, 120, "streams running")
            os.kill(engine_pid, signal.SIGKILL)
            killed_at = time.perf_counter()
            return await asyncio.gather(*tasks), killed_at

    results, killed_at = asyncio.run(run())
    outcomes = collections.Counter(f"HTTP {r.status}, error {r.error}, [DONE] {'yes' if r.done else 'no'}"
                                   for r in results)
    recovered_after, refusals = _until_answered(server, killed_at)
    new_pid = (server.model() or {}).get("pid")
    section.figures.update({"client_outcomes": dict(outcomes), "s_until_the_model_answers_again":
                            round(recovered_after, 2), "answers_before_recovery": dict(refusals),
                            "old_engine_pid": engine_pid, "new_engine_pid": new_pid})
    section.check("every stream ends with an engine_unavailable error event and [DONE]",
                  all(r.error == "engine_unavailable" and r.done for r in results), str(dict(outcomes)))
    section.check("only 503 engine_unavailable/200 while it recovers",
                  set(refusals) <= {"200", "503 engine_unavailable"}, str(dict(refusals)))
    section.check("a new engine process serves the model", new_pid not in (None, engine_pid), f"pid {new_pid}")
    section.check("the daemon itself stays up", server.alive())
    return section


def _until_answered(server: LocalServer, since: float, timeout: float = 300) -> tuple[float, collections.Counter]:
    """Sends a 1-token chat until one succeeds; returns seconds from `since` and the answers seen."""
    seen: collections.Counter = collections.Counter()
    body = {"model": EMBEDDED, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    with server.http(timeout=timeout) as http:
        while time.perf_counter() - since < timeout:
            response = http.post("/v1/chat/completions", json=body)
            code = response.json().get("error", {}).get("code") if response.status_code != 200 else None
            seen[f"{response.status_code}" + (f" {code}" if code else "")] += 1
            if response.status_code == 200:
                return time.perf_counter() - since, seen
            time.sleep(0.05)
    raise TimeoutError(f"the model did not answer within {timeout} s of the engine's death: {dict(seen)}")


def daemon_kill_then_run(server: LocalServer, command: str = "") -> Section:
    """SIGKILLs `server` (which is gone afterwards), then `localllm run` on the same home must recover."""
    section = Section("faults: daemon SIGKILL, then `localllm run`", command)
    engine_pid = server.load()["pid"]
    os.kill(server.process.pid, signal.SIGKILL)
    wait_for(server.exited, 10, "the daemon to die")
    orphan_gone = _gone_within(engine_pid, 30)
    start = time.perf_counter()
    env = clean_env(server.home, LOCALLLM_HOST="127.0.0.1:0")
    result = run_cli(server.home, "run", EMBEDDED, "Say hello.", "--max-tokens", "8", env=env, timeout=300)
    took = time.perf_counter() - start
    new_daemon = _read_state(server.state_file)
    try:
        section.figures.update({"run_exit_code": result.returncode, "run_s": round(took, 2),
                                "run_output": result.stdout.strip()[:200], "run_stderr": result.stderr.strip()[-300:],
                                "old_engine_exited_by_itself_within_s": orphan_gone})
        section.check("`localllm run` answers (exit 0, text on stdout)",
                      result.returncode == 0 and result.stdout.strip(), result.stderr.strip()[-300:])
        section.check("it started a new daemon in place of the stale one",
                      new_daemon is not None and new_daemon.get("pid") != server.process.pid, str(new_daemon))
        section.check("the killed daemon's engine exits by itself", orphan_gone is not None,
                      f"engine pid {engine_pid}, waited up to 30 s")
    finally:
        _stop_background_daemon(server, new_daemon)
    return section


def _read_state(path) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


def _gone_within(pid: int, timeout: float) -> float | None:
    start = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit", interval=0.05)
        return round(time.perf_counter() - start, 2)
    return None


def _stop_background_daemon(server: LocalServer, state: dict | None) -> None:
    """`localllm stop` for the daemon `localllm run` started; SIGKILL its session if it does not stop."""
    run_cli(server.home, "stop", timeout=60)
    if state and _gone_within(state["pid"], 20) is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(state["pid"], signal.SIGKILL)
