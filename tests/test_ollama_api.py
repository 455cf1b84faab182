"""The Ollama API through the official `ollama` Python client, against a real daemon on the embedded model:
answers must equal the OpenAI API's for the same greedy request on the same daemon, token for token, and every
shape must be Ollama's, errors included."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import ollama
import pytest

from daemon_helpers import running_daemon
from localllm.hub.embedded import EMBEDDED_ALIAS, embedded_gguf_path
from localllm.server.routes_status import VERSION

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 10}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    engine = ["block_size=16", "num_kv_blocks=96", "num_threads=1"]   # room for the few-shot tool conversation
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=[EMBEDDED_ALIAS], engine=engine) as d:
        yield d


@pytest.fixture(scope="module")
def client(daemon):
    return ollama.Client(host=daemon.url, timeout=300)


@pytest.fixture(scope="module")
def oai(daemon):
    return daemon.openai()


def openai_chat(oai, messages, max_tokens, **kwargs):
    return oai.chat.completions.create(model=EMBEDDED_ALIAS, messages=messages, max_tokens=max_tokens,
                                       temperature=0, **kwargs)


def assert_timings(final):
    assert final.done is True and final.done_reason in ("stop", "length")
    assert final.eval_count > 0 and final.prompt_eval_count > 0
    assert 0 <= final.load_duration < final.total_duration
    assert final.prompt_eval_duration > 0 and final.eval_duration > 0
    assert final.prompt_eval_duration + final.eval_duration <= final.total_duration


def test_the_probe_and_the_version(daemon):
    with daemon.http() as http:
        root = http.get("/")
        assert (root.status_code, root.text) == (200, "Ollama is running")
        head = http.head("/")
        assert head.status_code == 200 and head.content == b""
        assert http.get("/api/version").json() == {"version": VERSION}


def test_list_and_show_describe_the_embedded_model(client):
    gguf = embedded_gguf_path()
    listed = {m.model: m for m in client.list().models}
    model = listed[EMBEDDED_ALIAS]
    assert model.size == gguf.stat().st_size and re.fullmatch(r"[0-9a-f]{64}", model.digest)
    assert (model.details.format, model.details.family, model.details.quantization_level) == ("gguf", "llama", "Q4_1")
    assert model.details.parameter_size == "134.52M" and model.details.families == ["llama"]
    for name in ("smollm2", "smollm2:latest", EMBEDDED_ALIAS):   # Ollama's ways of writing it
        shown = client.show(name)
        assert shown.details == model.details and shown.capabilities == ["completion"]
        assert shown.modelinfo["llama.context_length"] == 8192 and shown.modelinfo["llama.block_count"] == 30
        assert shown.modelinfo["general.parameter_count"] == 134515008
        assert "<|im_start|>" in shown.template and "FROM " in shown.modelfile and "temperature" in shown.parameters


def test_chat_equals_the_openai_answer_stream_and_not(client, oai):
    expected = openai_chat(oai, MESSAGES, 10)
    answer = client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options=GREEDY, stream=False)
    assert answer.message.role == "assistant" and answer.message.content == expected.choices[0].message.content
    assert answer.model == EMBEDDED_ALIAS and answer.done_reason == expected.choices[0].finish_reason
    assert answer.prompt_eval_count == expected.usage.prompt_tokens
    assert answer.eval_count == expected.usage.completion_tokens
    assert_timings(answer)
    parts = list(client.chat("smollm2:latest", messages=MESSAGES, options=GREEDY, stream=True))
    assert len(parts) > 2 and all(not p.done for p in parts[:-1]) and parts[-1].message.content == ""
    assert "".join(p.message.content for p in parts) == answer.message.content
    assert parts[0].model == "smollm2:latest"   # the name as the request gave it
    assert_timings(parts[-1])
    assert parts[-1].eval_count == answer.eval_count
    created = datetime.fromisoformat(parts[0].created_at.replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 120


def test_logprobs_equal_the_openai_answers_stream_and_not(client, oai):
    """Each generated token with its logprob and top alternatives, as the OpenAI API gives them (the values to
    within the CPU kernels' rounding, which depends on how much of the prompt the prefix cache held); streamed, each
    chunk carries its own tokens'."""
    expected = openai_chat(oai, MESSAGES, 10, logprobs=True, top_logprobs=3).choices[0].logprobs.content

    def assert_like_expected(entries):
        entries = list(entries)
        assert [(e.token, [t.token for t in e.top_logprobs]) for e in entries] == [
            (e.token, [t.token for t in e.top_logprobs]) for e in expected]
        assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in expected], abs=0.02)

    answer = client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options=GREEDY, logprobs=True, top_logprobs=3)
    assert_like_expected(answer.logprobs)
    assert len(answer.logprobs) == answer.eval_count == len(expected)
    # the end-of-sequence token that stopped the answer has its logprob too, as on /v1/chat/completions
    assert "".join(e.token for e in answer.logprobs) == answer.message.content + "<|im_end|>"
    parts = list(client.generate(EMBEDDED_ALIAS, MESSAGES[0]["content"], options=GREEDY, logprobs=True,
                                 top_logprobs=3, stream=True))
    assert_like_expected(e for p in parts for e in p.logprobs or [])
    assert all(p.response == "".join(e.token for e in p.logprobs or []) for p in parts[:-1])
    assert parts[-1].response == "" and [e.token for e in parts[-1].logprobs] == ["<|im_end|>"]
    assert client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options=GREEDY).logprobs is None   # only when asked


def test_generate_templates_the_prompt_and_returns_its_context(client, oai):
    chat = client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options=GREEDY)
    answer = client.generate(EMBEDDED_ALIAS, MESSAGES[0]["content"], options=GREEDY)
    assert answer.response == chat.message.content and answer.eval_count == chat.eval_count
    assert len(answer.context) == answer.prompt_eval_count + answer.eval_count
    assert_timings(answer)
    streamed = list(client.generate(EMBEDDED_ALIAS, MESSAGES[0]["content"], options=GREEDY, stream=True))
    assert "".join(p.response for p in streamed) == answer.response and streamed[-1].context == answer.context
    follow_up = client.generate(EMBEDDED_ALIAS, "And of Italy?", context=answer.context, options=GREEDY)
    assert follow_up.prompt_eval_count > len(answer.context) and follow_up.response


def test_raw_generate_equals_an_openai_completion(client, oai):
    prompt = "The capital of France is"
    expected = oai.completions.create(model=EMBEDDED_ALIAS, prompt=prompt, max_tokens=6, temperature=0)
    answer = client.generate(EMBEDDED_ALIAS, prompt, raw=True, options={"temperature": 0, "num_predict": 6})
    assert answer.response == expected.choices[0].text and answer.context is None
    assert answer.prompt_eval_count == expected.usage.prompt_tokens


def test_options_reach_the_sampler(client, oai):
    seeded = {"temperature": 1.0, "seed": 7, "num_predict": 8, "top_k": 50, "top_p": 0.95}
    first = client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options=seeded).message.content
    assert client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options=seeded).message.content == first
    expected = openai_chat(oai, MESSAGES, 10, stop=[" Paris"]).choices[0].message.content
    stopped = client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options={**GREEDY, "stop": [" Paris"]})
    assert stopped.message.content == expected and "Paris" not in expected
    short = client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options={"temperature": 0, "num_predict": 2})
    assert (short.eval_count, short.done_reason) == (2, "length")
    penalised = client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options={**GREEDY, "repeat_penalty": 1.5,
                                                                       "presence_penalty": 1.0})
    assert penalised.eval_count > 0


AGE = {"type": "object", "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
       "required": ["age", "available"], "additionalProperties": False}


def test_format_holds_the_answer_to_json_as_response_format_does(client, oai):
    ask = [{"role": "user", "content": "Ollama is 22 years old and busy saving the world. Answer in JSON."}]
    expected = oai.chat.completions.create(
        model=EMBEDDED_ALIAS, messages=ask, temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "age", "schema": AGE}})
    answer = client.chat(EMBEDDED_ALIAS, messages=ask, format=AGE, options={"temperature": 0, "num_predict": 40})
    assert answer.message.content == expected.choices[0].message.content
    value = json.loads(answer.message.content)
    assert set(value) == {"age", "available"} and type(value["age"]) is int and type(value["available"]) is bool
    generated = client.generate(EMBEDDED_ALIAS, ask[0]["content"], format=AGE, options={"temperature": 0})
    assert generated.response == answer.message.content   # the same chat, templated from the prompt
    json_mode = oai.chat.completions.create(model=EMBEDDED_ALIAS, messages=ask, temperature=0, max_tokens=20,
                                            response_format={"type": "json_object"}).choices[0].message.content
    assert client.chat(EMBEDDED_ALIAS, messages=ask, format="json",
                       options={"temperature": 0, "num_predict": 20}).message.content == json_mode
    assert json_mode.startswith("{")


def test_num_ctx_caps_the_answer_and_refuses_a_prompt_that_does_not_fit(client):
    answer = client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options={"temperature": 0, "num_ctx": 40})
    assert answer.prompt_eval_count + answer.eval_count <= 40
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options={"num_ctx": 8})
    assert refused.value.status_code == 400 and "num_ctx" in refused.value.error


def test_ps_shows_the_loaded_model(client, daemon):
    client.chat(EMBEDDED_ALIAS, messages=MESSAGES, options={"num_predict": 1}, keep_alive="10m")
    (model,) = client.ps().models
    assert model.name == model.model == EMBEDDED_ALIAS and model.size > 0 and model.size_vram == 0
    assert model.context_length == daemon.model_status(EMBEDDED_ALIAS)["context_length"]
    assert model.details.quantization_level == "Q4_1"
    assert 540 < (model.expires_at - datetime.now(timezone.utc)).total_seconds() <= 600


def ollama_turns(openai_messages: list[dict]) -> list[dict]:
    """A conversation with tool calls in Ollama's shape: arguments as objects, results named by function."""
    out = []
    for message in openai_messages:
        if message.get("tool_calls"):
            out.append({"role": "assistant", "content": message["content"] or "", "tool_calls": [
                {"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in message["tool_calls"]]})
        elif message["role"] == "tool":
            out.append({"role": "tool", "content": message["content"], "tool_name": "get_weather"})
        else:
            out.append(message)
    return out


def test_chat_with_tools_reads_the_calls_as_chat_completions_do(client, oai):
    """The few-shot conversation of test_server_tools, after which the embedded model calls get_weather itself."""
    from test_server_tools import FEW_SHOT, TOOLS

    expected = oai.chat.completions.create(model=EMBEDDED_ALIAS, messages=FEW_SHOT, tools=TOOLS, temperature=0,
                                           max_tokens=40).choices[0].message
    (call,) = expected.tool_calls
    wanted = [{"function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)}}]
    options = {"temperature": 0, "num_predict": 40}
    answer = client.chat(EMBEDDED_ALIAS, messages=ollama_turns(FEW_SHOT), tools=TOOLS, options=options)
    assert [c.model_dump() for c in answer.message.tool_calls] == wanted and wanted[0]["function"]["name"] == \
        "get_weather"
    assert answer.message.content == (expected.content or "") and answer.done_reason == "stop"
    parts = list(client.chat(EMBEDDED_ALIAS, messages=ollama_turns(FEW_SHOT), tools=TOOLS, options=options,
                             stream=True))
    assert [c.model_dump() for p in parts for c in p.message.tool_calls or []] == wanted
    assert "".join(p.message.content for p in parts) == answer.message.content
    assert "<tool_call>" not in "".join(p.message.content for p in parts)


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "no-such-model", "messages": MESSAGES}, 404, "model 'no-such-model' not found"),
    ({"messages": MESSAGES}, 400, "model is required"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "options": {"temperature": "hot"}}, 400, "options.temperature"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "options": {"top_p": 0}}, 400, "top_p"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "keep_alive": "soon"}, 400, "keep_alive"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "format": "xml"}, 400, "format must be"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "format": {"type": 5}}, 400, "Invalid format"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "format": "json",
      "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "format cannot be combined with tools"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "tools": [{"type": "function"}]}, 400, "tools.0.function"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "a b"}}]},
     400, "Invalid function name"),
    ({"model": EMBEDDED_ALIAS, "messages": [{"role": "user", "content": "hi", "images": ["AAAA"]}]}, 400, "images"),
    ({"model": EMBEDDED_ALIAS, "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ({"model": EMBEDDED_ALIAS, "messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, 400,
     "top_logprobs must be between 0 and 20"),
])
def test_errors_are_ollama_shaped(daemon, body, status, fragment):
    with daemon.http() as http:
        response = http.post("/api/chat", json=body)
    assert response.status_code == status and set(response.json()) == {"error"}, response.text
    assert isinstance(response.json()["error"], str) and fragment in response.json()["error"]


def test_error_shapes_on_every_route(daemon, client):
    with daemon.http() as http:
        for method, path, body in [("POST", "/api/generate", {"model": EMBEDDED_ALIAS, "suffix": "x", "prompt": "y"}),
                                   ("POST", "/api/show", {"model": "nothing:here"}),
                                   ("POST", "/api/pull", {"model": "../escape"}),
                                   ("DELETE", "/api/delete", {"model": "nothing:here"}),
                                   ("POST", "/api/copy", {"source": "nothing:here", "destination": "x"}),
                                   ("GET", "/api/chat", None)]:
            response = http.request(method, path, json=body)
            assert response.status_code in (400, 404, 405) and isinstance(response.json()["error"], str), path
        bad_json = http.post("/api/generate", content=b"{not json")
        assert bad_json.status_code == 400 and isinstance(bad_json.json()["error"], str)
    with pytest.raises(ollama.ResponseError) as refused:
        client.show("nothing:here")
    assert refused.value.status_code == 404 and refused.value.error == "model 'nothing:here' not found"


def test_every_route_of_the_ollama_api_is_known_to_answer_ollama_shaped_errors():
    from localllm.server.errors import OLLAMA_PATHS
    from localllm.server.routes_ollama import router

    assert {route.path for route in router.routes} <= OLLAMA_PATHS


def test_a_body_without_content_type_is_json(daemon):
    """`curl http://.../api/generate -d '{...}'`, as Ollama's documentation writes every example."""
    body = b'{"model": "smollm2:135m", "prompt": "Hi", "stream": false, "options": {"num_predict": 2}}'
    with daemon.http() as http:
        for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
            answer = http.post("/api/generate", content=body, headers=headers)
            assert answer.status_code == 200 and answer.json()["eval_count"] == 2, answer.text


def test_an_empty_request_loads_and_keep_alive_zero_unloads(client, daemon):
    loaded = client.generate(EMBEDDED_ALIAS, "")
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    assert daemon.model_status(EMBEDDED_ALIAS)["state"] == "ready"
    unloaded = client.chat(EMBEDDED_ALIAS, messages=[], keep_alive=0)
    assert (unloaded.done_reason, unloaded.message.content) == ("unload", "")
    daemon.wait_until(lambda s: s["models"] == [], 30, "the model to unload")
    assert client.ps().models == []
