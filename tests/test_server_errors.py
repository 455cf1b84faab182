"""Every refusal of the daemon's API, over raw HTTP: OpenAI's error shape and the right status, no
tracebacks; an aborted or disconnected request frees its KV blocks at once; a dead engine is reported and
replaced."""
from __future__ import annotations

import json
import os
import signal
import threading

import httpx
import pytest

from daemon_helpers import frozen_engine, running_daemon, wait_gone
from tiny_models import build_model_dir

# max_num_seqs 2 + max_queued 1: three sequences at once, the fourth is refused
ENGINE = ["block_size=4", "num_kv_blocks=256", "num_threads=1", "max_num_seqs=2"]
CONTEXT = 256 * 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return str(build_model_dir("qwen3", root / "tiny-qwen3")), str(build_model_dir("llama", root / "not-allowed"))


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=[models[0]], engine=ENGINE,
                        args=["--max-queued", "1"]) as d:
        yield d


@pytest.fixture(scope="module")
def http(daemon):
    with daemon.http() as client:
        yield client


@pytest.fixture
def tiny(models):
    return models[0]


def chat_body(model, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, **extra}


def assert_error(response, status, code=None, param=None, type_=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    if type_ is not None:
        assert body["error"]["type"] == type_
    return body["error"]


def test_malformed_json_is_400(http):
    r = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_json", type_="invalid_request_error")


@pytest.mark.parametrize("patch, param", [
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"stream": "yes"}, "stream"),
    ({"n": "2"}, "n"),
])
def test_wrong_types_are_400_naming_the_parameter(http, tiny, patch, param):
    assert_error(http.post("/v1/chat/completions", json={**chat_body(tiny), **patch}), 400, param=param)


def test_missing_fields_are_400(http, tiny):
    assert_error(http.post("/v1/chat/completions", json={"model": tiny}), 400, "missing_required_parameter", "messages")
    assert_error(http.post("/v1/completions", json={"prompt": "hi"}), 400, "missing_required_parameter", "model")
    assert_error(http.post("/v1/chat/completions", json=chat_body(tiny, messages=[])), 400, param="messages")


@pytest.mark.parametrize("name", ["no-such-model", "../../etc", "/etc", "/etc/passwd", "~/.ssh", "..", ""])
def test_unknown_or_path_like_models_are_404(http, name):
    if name == "":
        assert_error(http.post("/v1/chat/completions", json=chat_body(name)), 404, "model_not_found", "model")
        return
    assert_error(http.post("/v1/chat/completions", json=chat_body(name)), 404, "model_not_found", "model")
    assert_error(http.post("/v1/completions", json={"model": name, "prompt": "hi"}), 404, "model_not_found")


def test_a_real_model_directory_not_allowed_is_404(http, models, daemon):
    error = assert_error(http.post("/v1/chat/completions", json=chat_body(models[1])), 404, "model_not_found")
    assert models[1] in error["message"]
    assert all(m["name"] != models[1] for m in daemon.status()["models"])   # nothing was loaded


def test_prompt_plus_max_tokens_over_the_context_is_400_with_the_numbers(http, tiny):
    r = http.post("/v1/completions", json={"model": tiny, "prompt": list(range(1, 201)), "max_tokens": 900})
    error = assert_error(r, 400, "context_length_exceeded", "prompt")
    assert f"maximum context length is {CONTEXT} tokens" in error["message"]
    assert "you requested 1100 tokens (200 in the prompt, 900 in the completion)" in error["message"]
    r = http.post("/v1/completions", json={"model": tiny, "prompt": [i % 300 + 1 for i in range(CONTEXT + 4)],
                                           "max_tokens": None})
    assert str(CONTEXT + 4) in assert_error(r, 400, "context_length_exceeded")["message"]
    long_chat = chat_body(tiny, messages=[{"role": "user", "content": "fox " * 1100}], max_tokens=10)
    assert_error(http.post("/v1/chat/completions", json=long_chat), 400, "context_length_exceeded", "messages")


@pytest.mark.parametrize("patch, param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"top_k": -5}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_tokens": 9}, "min_tokens"),
    ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"seed": 2 ** 70}, "seed"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"five": 1}}, "logit_bias"),
    ({"logit_bias": {"-5": 1}}, "logit_bias"),
    ({"logit_bias": {"10000000": 1}}, "logit_bias"),
    ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "response_format"),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "response_format": {"type": "json_object"}},
     "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}}], "tool_choice": "required"},
     "tools"),
])
def test_bad_sampling_values_are_400(http, tiny, patch, param):
    assert_error(http.post("/v1/chat/completions", json={**chat_body(tiny), **patch}), 400, param=param)


@pytest.mark.parametrize("temperature", [1e-300, 1e-45])
def test_a_temperature_too_small_for_float32_samples_greedily(daemon, http, tiny, temperature):
    pid = daemon.model_status(tiny)["pid"]
    body = {"model": tiny, "prompt": "The quick", "max_tokens": 8, "ignore_eos": True}
    tiny_temperature = http.post("/v1/completions", json={**body, "temperature": temperature})
    greedy = http.post("/v1/completions", json={**body, "temperature": 0})
    assert tiny_temperature.status_code == 200, tiny_temperature.text
    assert tiny_temperature.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    assert daemon.model_status(tiny)["pid"] == pid


@pytest.mark.parametrize("fields, param", [
    ('"temperature": Infinity, "min_tokens": 5', "temperature"),
    ('"temperature": NaN', "temperature"),
    ('"temperature": 1e300', "temperature"),
    ('"repetition_penalty": 1e-300', "repetition_penalty"),
    ('"repetition_penalty": Infinity', "repetition_penalty"),
    ('"top_p": NaN', "top_p"),
    ('"presence_penalty": -Infinity', "presence_penalty"),
])
def test_sampling_values_that_cannot_be_honoured_are_400_and_the_engine_lives(daemon, http, tiny, fields, param):
    pid = daemon.model_status(tiny)["pid"]
    body = f'{{"model": "{tiny}", "prompt": "The quick", "max_tokens": 8, {fields}}}'
    r = http.post("/v1/completions", content=body.encode(), headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_value", param=param)
    assert http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "max_tokens": 2}).status_code == 200
    assert daemon.model_status(tiny)["pid"] == pid


def test_a_stop_token_id_outside_the_vocabulary_is_400(daemon, http, tiny):
    pid = daemon.model_status(tiny)["pid"]
    r = http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "max_tokens": 4, "min_tokens": 2,
                                           "stop_token_ids": [10 ** 6]})
    assert "stop_token_ids names token id 1000000, outside the vocabulary" in assert_error(
        r, 400, "invalid_value", param="stop_token_ids")["message"]
    assert daemon.model_status(tiny)["pid"] == pid


def test_bad_completions_values_are_400(http, tiny):
    assert_error(http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "logprobs": 25}), 400,
                 param="logprobs")
    assert_error(http.post("/v1/completions", json={"model": tiny, "prompt": [[]]}), 400, param="prompt")
    assert_error(http.post("/v1/completions", json={"model": tiny, "prompt": [10 ** 6]}), 400, param="prompt")
    assert_error(http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "echo": True, "suffix": "x"}), 400,
                 param="echo")
    assert_error(http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "max_tokens": 0}), 400,
                 param="max_tokens")   # the prompt alone is an answer only when it is echoed


def test_unknown_routes_and_methods(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


def _generated(http, tiny) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'localllm_generation_tokens_total{{model="{tiny}"}}'):
            return float(line.split()[-1])
    return 0.0


def _open_stream(daemon, tiny, first_chunk=True):
    """A streaming request held open (after its first content chunk, if asked); returns (client, response,
    lines). Keep `lines` referenced: when httpx's line iterator is collected, it closes the connection."""
    client = daemon.http()
    request = client.build_request("POST", "/v1/completions", json={
        "model": tiny, "prompt": [5, 17, 42, 99, 3, 7, 8, 11, 13], "max_tokens": 900, "temperature": 0,
        "ignore_eos": True, "stream": True})
    response = client.send(request, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    if first_chunk:
        while not (line := next(lines)).startswith("data: {"):
            pass
        assert '"text"' in line, line
    return client, response, lines


def _all_free(status):
    return status["running"] == 0 and status["waiting"] == 0 and status["kv_blocks"]["used"] == 0


def test_disconnect_mid_stream_frees_blocks_at_once(daemon, http, tiny):
    total = daemon.model_status(tiny)["kv_blocks"]["total"]
    before = _generated(http, tiny)
    pid = daemon.model_status(tiny)["pid"]
    client, response, _lines = _open_stream(daemon, tiny)
    with frozen_engine(pid):
        status = daemon.model_status(tiny)
        assert status["running"] == 1 and status["requests"] == 1
        assert status["kv_blocks"]["used"] >= 3   # 9 prompt tokens and more in blocks of 4
        response.close()
        client.close()
        daemon.wait_until(lambda s: s["models"][0]["requests"] == 0, 10, "the front end to see the disconnect")
    status = daemon.wait_until(_all_free, 10, "the blocks to be freed")
    blocks = status["kv_blocks"]
    assert blocks["used"] == 0 and blocks["cached"] + blocks["free"] == total
    assert _generated(http, tiny) - before < 900   # aborted, not finished


def test_disconnect_of_a_non_streaming_request_aborts_it(daemon, http, tiny):
    before = _generated(http, tiny)
    with frozen_engine(daemon.model_status(tiny)["pid"]):
        with daemon.http(timeout=httpx.Timeout(120, read=0.5)) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.post("/v1/completions", json={"model": tiny, "prompt": "The quick", "max_tokens": 200,
                                                     "temperature": 0, "ignore_eos": True})
        daemon.wait_until(lambda s: s["models"][0]["requests"] == 0, 10, "the front end to see the disconnect")
    daemon.wait_until(_all_free, 10, "the blocks to be freed")
    assert _generated(http, tiny) == before   # the abort reached the engine right behind the request


def test_overload_is_503_with_retry_after(daemon, http, tiny):
    pid = daemon.model_status(tiny)["pid"]
    held = [_open_stream(daemon, tiny) for _ in range(2)]   # max_num_seqs 2: both run
    try:
        with frozen_engine(pid):
            held.append(_open_stream(daemon, tiny, first_chunk=False))   # max_queued 1: this one waits
            daemon.wait_until(lambda s: s["models"][0]["requests"] == 3, 10, "three requests")
            r = http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "max_tokens": 2})
            assert_error(r, 503, "overloaded", type_="server_error")
            assert r.headers["retry-after"] == "1"
    finally:
        for client, response, _ in held:
            response.close()
            client.close()
    daemon.wait_until(_all_free, 10, "the blocks to be freed")
    assert http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "max_tokens": 2}).status_code == 200


def test_a_killed_engine_fails_its_requests_cleanly_and_is_reloaded(daemon, http, tiny):
    result = {}

    def request():
        result["response"] = http.post("/v1/completions", json={"model": tiny, "prompt": "The quick",
                                                                 "max_tokens": 200, "ignore_eos": True})

    with frozen_engine(daemon.model_status(tiny)["pid"]) as pid:
        thread = threading.Thread(target=request)
        thread.start()
        daemon.wait_until(lambda s: s["models"][0]["requests"] == 1, 10, "the request to be sent")
        os.kill(pid, signal.SIGKILL)
        thread.join(30)
    error = assert_error(result["response"], 503, "engine_unavailable")
    assert tiny in error["message"]
    assert wait_gone(pid)
    daemon.wait_until(lambda s: not s["models"], 10, "the dead engine to be dropped")
    r = http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "max_tokens": 3})   # loads it again
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert daemon.model_status(tiny)["pid"] != pid


def test_a_killed_engine_ends_a_stream_with_an_error_event(daemon, tiny):
    with frozen_engine(daemon.model_status(tiny)["pid"]) as pid:
        client, response, lines = _open_stream(daemon, tiny, first_chunk=False)
        os.kill(pid, signal.SIGKILL)
    try:
        events = [line[6:] for line in lines if line.startswith("data: ")]
    finally:
        response.close()
        client.close()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "engine_unavailable" and "Traceback" not in error["message"]
    assert wait_gone(pid)


def test_metrics_count_requests_tokens_and_latencies(daemon, http, tiny):
    r = http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200
    text = http.get("/metrics").text
    assert 'localllm_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert 'localllm_requests_total{endpoint="/v1/chat/completions",status="400"}' in text
    assert f'localllm_generation_tokens_total{{model="{tiny}"}}' in text
    for name in ("localllm_time_to_first_token_seconds_bucket", "localllm_inter_token_latency_seconds_bucket",
                 "localllm_requests_running", "localllm_requests_waiting", "localllm_prefix_cache_hit_rate"):
        assert name in text
    for state in ("used", "cached", "free"):
        assert f'localllm_kv_blocks{{model="{tiny}",state="{state}"}}' in text
