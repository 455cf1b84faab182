"""Requests that once took the daemon down or stalled it: non-finite keep_alive, lone surrogates in text,
oversized bodies, huge prompts tokenized on the event loop. Each gets a 4xx in OpenAI's shape, and the daemon
keeps answering everyone else."""
from __future__ import annotations

import json
import math
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from daemon_helpers import running_daemon
from localllm.cli.main import app
from localllm.server.settings import ServerSettings
from test_server_errors import assert_error
from tiny_models import build_model_dir

MAX_BODY = 3_500_000
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_model_dir("qwen3", tmp_path_factory.mktemp("models") / "tiny-qwen3"))


@pytest.fixture(scope="module")
def daemon(tiny, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=[tiny],
                        args=["--max-body-bytes", str(MAX_BODY)]) as d:
        yield d


@pytest.fixture(scope="module")
def http(daemon):
    with daemon.http() as client:
        yield client


def post_raw(http, route: str, body: dict) -> httpx.Response:
    """The body as Python's json writes it: NaN, Infinity and lone surrogates (escaped) included."""
    return http.post(route, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def chat_body(model, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, **extra}


# --- keep_alive ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300])
def test_non_finite_or_huge_keep_alive_is_400_and_status_keeps_answering(daemon, http, tiny, value):
    assert_error(post_raw(http, "/v1/chat/completions", chat_body(tiny, keep_alive=value)), 400, param="keep_alive")
    assert_error(post_raw(http, "/v1/completions", {"model": tiny, "prompt": "hi", "max_tokens": 2,
                                                    "keep_alive": value}), 400, param="keep_alive")
    status = http.get("/api/status")
    assert status.status_code == 200, status.text
    assert status.json()["models"][0]["name"] == tiny


def test_negative_keep_alive_is_forever_and_ps_shows_it(daemon, http, tiny):
    r = post_raw(http, "/v1/chat/completions", chat_body(tiny, keep_alive=-1e9))
    assert r.status_code == 200, r.text
    model = daemon.model_status(tiny)
    assert model["keep_alive_forever"] and model["keep_alive_until"] is None
    r = post_raw(http, "/v1/chat/completions", chat_body(tiny, keep_alive=300))
    assert r.status_code == 200 and daemon.model_status(tiny)["keep_alive_until"] is not None


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e300])
def test_keep_alive_setting_and_flag_must_be_finite_and_bounded(value):
    with pytest.raises(ValueError, match="keep_alive"):
        ServerSettings(keep_alive_s=value)
    result = runner.invoke(app, ["serve", "--port", "0", "--keep-alive", str(value)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("Error: ") and "keep" in result.stderr


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300, -1e300])
def test_status_fields_of_any_stored_keep_alive_are_json(value):
    from localllm.cli.ps import render
    from localllm.server.models import keep_alive_status

    fields = keep_alive_status(value, time.monotonic() + value if value > 0 else None)
    json.dumps(fields, allow_nan=False)
    model = {"name": "m", "state": "ready", "memory_bytes": 1, "device": "cpu", "context_length": 8, **fields}
    status = {"models": [model], "kv_blocks": {"used": 0, "cached": 0, "free": 1, "total": 1, "block_size": 4},
              "prefix_cache": {"hit_rate": 0.0, "hits": 0, "queries": 0}, "running": 0, "waiting": 0,
              "tokens_per_s": 0.0, "pid": 1, "address": "http://127.0.0.1:1", "uptime_s": 1.0, "gpus": []}
    assert "m " in render(status)
    model["keep_alive_until"] = "not a time"
    assert "m " in render(status)


# --- lone surrogates ---------------------------------------------------------------------------------
LONE = "a\ud800b"


@pytest.mark.parametrize("route, patch, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONE}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
     "messages.0.content.0.text"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "hi", "name": LONE}]}, "messages.1.name"),
    ("/v1/chat/completions", {"stop": LONE}, "stop"),
    ("/v1/chat/completions", {"stop": ["x", LONE]}, "stop.1"),
    ("/v1/chat/completions", {"model": LONE}, "model"),
    ("/v1/completions", {"prompt": LONE}, "prompt"),
    ("/v1/completions", {"prompt": ["fine", LONE]}, "prompt.1"),
    ("/v1/completions", {"stop": LONE}, "stop"),
    ("/v1/completions", {"suffix": LONE}, "suffix"),
])
def test_lone_surrogates_are_400_naming_the_field(daemon, http, tiny, route, patch, param):
    base = chat_body(tiny) if "chat" in route else {"model": tiny, "prompt": "hi", "max_tokens": 2}
    error = assert_error(post_raw(http, route, {**base, **patch}), 400, "invalid_value", param)
    assert "surrogate" in error["message"]


def test_unload_of_a_surrogate_name_is_400(http):
    assert_error(post_raw(http, "/api/unload", {"model": LONE}), 400, param="model")


# --- body size ---------------------------------------------------------------------------------------
def test_a_body_over_the_limit_by_content_length_is_413_before_it_is_sent(daemon):
    url = urlsplit(daemon.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n{" % (MAX_BODY + 1))
        answer = b""   # no body sent: an answer must come anyway
        while not answer.endswith(b"}}") and (data := sock.recv(65536)):
            answer += data
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"413", head
    error = json.loads(rest)["error"]
    assert error["code"] == "request_too_large" and str(MAX_BODY) in error["message"]


def test_a_streamed_body_over_the_limit_is_413(http, tiny):
    prefix = json.dumps({"model": tiny, "prompt": ""})[:-2].encode()
    chunks = [prefix] + [b"x" * 65536] * (MAX_BODY // 65536) + [b"x" * (MAX_BODY % 65536), b'"}']
    assert sum(map(len, chunks)) > MAX_BODY
    r = http.post("/v1/completions", content=iter(chunks), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers   # sent chunked: only counting can catch it
    assert_error(r, 413, "request_too_large", type_="invalid_request_error")


def test_max_body_setting_must_be_positive():
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServerSettings(max_body_bytes=0)


# --- the event loop stays free ---------------------------------------------------------------------------
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_health_answers_while_a_huge_prompt_is_tokenized(daemon, tiny, route):
    text = "The quick brown fox jumps over the lazy dog. " * (3_000_000 // 45)
    body = ({"model": tiny, "prompt": text, "max_tokens": 2} if "chat" not in route
            else chat_body(tiny, messages=[{"role": "user", "content": text}]))
    result = {}

    def big_request():
        with daemon.http(timeout=300) as client:
            result["response"] = client.post(route, json=body)

    thread = threading.Thread(target=big_request)
    latencies = []
    with daemon.http(timeout=60) as client:
        thread.start()
        while thread.is_alive():
            start = time.monotonic()
            assert client.get("/health").status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)
    thread.join()
    # the prompt is far over the context: refused after tokenizing it, which took seconds
    assert_error(result["response"], 400, "context_length_exceeded")
    assert len(latencies) >= 5, latencies
    assert max(latencies) < 2.0, latencies   # tokenizing on the event loop held /health for the whole 5+ s
