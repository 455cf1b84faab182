"""Bad input: every hand-made case of bad_input_cases.py against a real daemon. No answer may be a 5xx, every
error must have OpenAI's shape, no stream may end in an engine failure, /api/status must keep answering and
/health must stay fast while big bodies are handled."""
from __future__ import annotations

import collections
import sys
import threading
import time
from dataclasses import dataclass

import httpx

from reliability_checks.bad_input_cases import all_cases
from reliability_checks.report import Section
from reliability_checks.responses import error_shape_problem, stream_error
from reliability_checks.server import EMBEDDED, LocalServer, run_cli


@dataclass
class Outcome:
    case: str
    status: int | None
    seconds: float
    problem: str | None = None      # why the answer is wrong, if it is
    status_after: int | None = None  # GET /api/status right after


def bad_input(server: LocalServer, max_at_once: int, command: str = "", **sizes) -> Section:
    cases = all_cases(max_at_once, **sizes)
    section = Section(f"bad input: {len(cases)} hand-made cases", command)
    server.load()
    with HealthWatch(server.url) as health, server.http(timeout=600) as http:
        outcomes = [_send(http, case, health) for case in cases]
    counts = collections.Counter(str(o.status) for o in outcomes)
    fivexx = [o for o in outcomes if o.status is None or o.status >= 500]
    wrong = [o for o in outcomes if o.problem]
    status_broken = [o for o in outcomes if o.status_after != 200]
    slowest = max(outcomes, key=lambda o: o.seconds)
    section.figures.update({"cases": len(cases), "answers_by_status": dict(sorted(counts.items())),
                            "5xx": len(fivexx), "wrong_answers": len(wrong),
                            "api_status_not_200_after": len(status_broken),
                            "slowest_case": f"{slowest.case} ({slowest.seconds:.1f} s)",
                            "health_max_latency_s": round(health.worst[0], 3),
                            "health_worst_during": health.worst[1]})
    section.check("0 responses with status 5xx", not fivexx, _names(fivexx))
    section.check("every error in OpenAI's shape, no stream ending in an engine error", not wrong, _names(wrong))
    section.check("/api/status answers 200 after every case", not status_broken,
                  "; ".join(f"after {o.case}: {o.status_after}" for o in status_broken))
    section.check("/health answers within 1 s throughout", health.worst[0] < 1.0,
                  f"{health.worst[0]:.2f} s during {health.worst[1]}")
    _after(server, section)
    return section


def _send(http: httpx.Client, case, health: "HealthWatch") -> Outcome:
    name, method, path, body = case
    health.current = name
    start = time.perf_counter()
    try:
        response = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
        status, content = response.status_code, response.content
    except httpx.HTTPError as e:
        return Outcome(name, None, time.perf_counter() - start, f"{type(e).__name__}: {e}")
    outcome = Outcome(name, status, time.perf_counter() - start)
    print(f"  {name[:70]}: {status} in {outcome.seconds:.1f} s", file=sys.stderr, flush=True)
    if status >= 400:
        outcome.problem = error_shape_problem(status, content)
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        code = stream_error(content)
        outcome.problem = f"stream ended with error {code}" if code else None
    try:
        outcome.status_after = http.get("/api/status").status_code
    except httpx.HTTPError:
        outcome.status_after = None
    return outcome


def _after(server: LocalServer, section: Section) -> None:
    """The daemon must be alive and serve normally; `localllm ps` must work."""
    section.check("the daemon is alive after all cases", server.alive())
    with server.http(timeout=300) as http:
        body = {"model": EMBEDDED, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                "keep_alive": 300}
        response = http.post("/v1/chat/completions", json=body)
    section.check("a normal request still succeeds", response.status_code == 200, response.text[:200])
    ps = run_cli(server.home, "ps", timeout=60)
    section.check("`localllm ps` works after all cases", ps.returncode == 0, (ps.stderr or ps.stdout)[-200:])


class HealthWatch:
    """Polls /health in a thread while the cases run; keeps the worst latency and the case it happened in."""

    def __init__(self, url: str, interval: float = 0.1):
        self.url, self.interval = url, interval
        self.current = "start"   # the case being sent, set by the sender
        self.worst: tuple[float, str] = (0.0, "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self._stop.is_set():
                start, during = time.perf_counter(), self.current
                try:
                    client.get("/health")
                except httpx.HTTPError:
                    pass
                latency = time.perf_counter() - start
                if latency > self.worst[0]:
                    self.worst = (latency, during)
                self._stop.wait(self.interval)

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(130)


def _names(outcomes: list[Outcome], limit: int = 12) -> str:
    shown = "; ".join(f"{o.case} -> {o.status}" + (f" ({o.problem})" if o.problem else "") for o in outcomes[:limit])
    return shown + (f"; and {len(outcomes) - limit} more" if len(outcomes) > limit else "")
