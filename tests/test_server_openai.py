"""The daemon's OpenAI-compatible API through the official `openai` client, against a real daemon process:
answers must equal what the offline LLM gives for the same request, token for token, with exact usage."""
from __future__ import annotations

import json
import threading

import pytest
from transformers import AutoTokenizer

from daemon_helpers import TINY_ENGINE, frozen_engine, running_daemon
from localllm import LLM, SamplingParams
from localllm.loader.resolve import resolve_model

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]
PROMPT = "Paged attention keeps"


@pytest.fixture(scope="module")
def offline(tiny):
    return LLM(tiny, block_size=4, num_kv_blocks=128)


@pytest.fixture(scope="module")
def oai(daemon):
    return daemon.openai()


def greedy(max_tokens, **kw):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def test_models_list_has_the_started_model_and_the_embedded_alias(oai, tiny):
    ids = [m.id for m in oai.models.list().data]
    assert tiny in ids and "smollm2:135m" in ids
    assert oai.models.retrieve(tiny).id == tiny


def test_chat_greedy_equals_offline(oai, offline, tiny):
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=12, temperature=0,
                                    extra_body={"ignore_eos": True}, user="someone")   # `user` is accepted, ignored
    expected = offline.chat(MESSAGES, greedy(12))[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == tiny
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected.outputs[0].text
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].logprobs is None
    assert r.usage.prompt_tokens == len(offline.engine.chat_prompt(MESSAGES)) == len(expected.prompt_token_ids)
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_chat_stream_equals_offline_with_usage(oai, offline, tiny):
    stream = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
                                         stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    expected = offline.chat(MESSAGES, greedy(12))[0]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.outputs[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.prompt_tokens == len(expected.prompt_token_ids)
    assert chunks[-1].usage.completion_tokens == 12


def test_completions_equal_offline_stream_and_not(oai, offline, tiny):
    expected = offline.generate(PROMPT, greedy(10))[0]
    r = oai.completions.create(model=tiny, prompt=PROMPT, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.choices[0].text == expected.outputs[0].text
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(offline.tokenizer.encode(PROMPT)), 10)
    chunks = list(oai.completions.create(model=tiny, prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
                                         stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.outputs[0].text
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    ids = [5, 17, 42, 99, 3]
    r = oai.completions.create(model=tiny, prompt=ids, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].text == offline.generate([ids], greedy(6))[0].outputs[0].text
    assert r.usage.prompt_tokens == 5


def test_n_seeded_completions_equal_offline(oai, offline, tiny):
    params = SamplingParams(n=3, temperature=0.9, seed=11, max_tokens=8, ignore_eos=True)
    expected = [o.text for o in offline.chat(MESSAGES, params)[0].outputs]
    assert len(set(expected)) > 1
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, n=3, temperature=0.9, seed=11, max_tokens=8,
                                    extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == expected
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == len(offline.engine.chat_prompt(MESSAGES))
    streamed = {0: "", 1: "", 2: ""}
    for chunk in oai.chat.completions.create(model=tiny, messages=MESSAGES, n=3, temperature=0.9, seed=11,
                                             max_tokens=8, stream=True, extra_body={"ignore_eos": True}):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert list(streamed.values()) == expected


def test_several_prompts_times_n(oai, offline, tiny):
    prompts = ["The quick brown", "Continuous batching"]
    r = oai.completions.create(model=tiny, prompt=prompts, n=2, max_tokens=5, temperature=0,
                               extra_body={"ignore_eos": True})
    expected = offline.generate(prompts, greedy(5))
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [expected[0].outputs[0].text] * 2 + [expected[1].outputs[0].text] * 2
    assert r.usage.prompt_tokens == sum(len(offline.tokenizer.encode(p)) for p in prompts)
    assert r.usage.completion_tokens == 20


def test_chat_logprobs_equal_offline(oai, offline, tiny):
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True,
                                    top_logprobs=3, extra_body={"ignore_eos": True})
    expected = offline.chat(MESSAGES, greedy(6, logprobs=3))[0].outputs[0]
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    tokenizer = offline.tokenizer
    for entry, token_id, sampled in zip(content, expected.token_ids, expected.logprobs):
        assert entry.logprob == pytest.approx(sampled.logprob, abs=1e-4)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([lp for _, lp in sampled.top_logprobs],
                                                                         abs=1e-4)
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if "\ufffd" not in text:
            assert bytes(entry.bytes).decode() == text == entry.token
    streamed = [e for chunk in oai.chat.completions.create(
        model=tiny, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, stream=True,
        extra_body={"ignore_eos": True}) for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in content]


def test_completions_logprobs_shape(oai, tiny):
    r = oai.completions.create(model=tiny, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2,
                               extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert lp.text_offset[0] == 0
    assert all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens))
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 2 and max(top.values()) == pytest.approx(logprob)   # greedy: the best token
        assert token in top


def test_echo_with_logprobs_scores_the_prompt_as_lm_eval_asks(oai, offline, tiny):
    """lm-evaluation-harness's loglikelihood request (echo, logprobs 1, max_tokens 1, token ids in): the prompt's
    tokens come first, the first one's logprob null, then the offline engine's prompt logprobs; the last entry is the
    generated token."""
    ids = [5, 17, 42, 99, 3, 7, 8, 11]
    expected = offline.generate([ids], greedy(1, prompt_logprobs=1))[0]
    r = oai.completions.create(model=tiny, prompt=[ids], max_tokens=1, logprobs=1, echo=True, temperature=0,
                               extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:-1] == pytest.approx([e.logprob for e in expected.prompt_logprobs[1:]], abs=1e-4)
    assert lp.token_logprobs[-1] == pytest.approx(max(lp.top_logprobs[-1].values()))   # greedy: the best token
    assert r.choices[0].text == offline.tokenizer.decode(ids) + expected.outputs[0].text
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 1)
    # max_tokens 0: the prompt alone; streamed: the prompt first, with the same logprobs
    r = oai.completions.create(model=tiny, prompt=[ids], max_tokens=0, logprobs=1, echo=True, temperature=0)
    assert r.choices[0].logprobs.token_logprobs == lp.token_logprobs[:-1] and r.usage.completion_tokens == 0
    assert r.choices[0].text == offline.tokenizer.decode(ids) and r.choices[0].finish_reason == "length"
    chunks = list(oai.completions.create(model=tiny, prompt=[ids], max_tokens=3, logprobs=1, echo=True,
                                         temperature=0, stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].logprobs.token_logprobs == lp.token_logprobs[:-1]
    assert "".join(c.choices[0].text for c in chunks) == offline.tokenizer.decode(ids) + offline.generate(
        [ids], greedy(3))[0].outputs[0].text
    chunks = list(oai.completions.create(model=tiny, prompt=[ids], max_tokens=0, echo=True, temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == offline.tokenizer.decode(ids)
    assert chunks[-1].usage.completion_tokens == 0


def test_stop_string_and_stop_token(oai, offline, tiny):
    full = offline.chat(MESSAGES, greedy(16))[0].outputs[0]
    stop = full.text[len(full.text) // 3: len(full.text) // 3 + 3]
    expected = offline.chat(MESSAGES, greedy(16, stop=[stop]))[0].outputs[0]
    assert expected.finish_reason == "stop"
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=16, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == expected.text
    assert r.usage.completion_tokens == len(expected.token_ids)
    streamed = list(oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=16, temperature=0,
                                                stop=stop, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected.text
    assert streamed[-1].choices[0].finish_reason == "stop"
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_completion_tokens=16, temperature=0,
                                    extra_body={"stop_token_ids": [full.token_ids[2]]})
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == full.token_ids.index(full.token_ids[2]) + 1


def test_max_completion_tokens_and_sampling_extras_equal_offline(oai, offline, tiny):
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_completion_tokens=5, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=5, min_p=0.05, repetition_penalty=1.3,
                            presence_penalty=0.5, frequency_penalty=0.3, seed=3, max_tokens=10, min_tokens=4)
    expected = offline.chat(MESSAGES, params)[0].outputs[0]
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, temperature=0.8, top_p=0.9, seed=3, max_tokens=10,
                                    presence_penalty=0.5, frequency_penalty=0.3,
                                    extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3, "min_tokens": 4})
    assert r.choices[0].message.content == expected.text
    assert r.usage.completion_tokens == len(expected.token_ids)
    assert r.choices[0].finish_reason == expected.finish_reason


def test_logit_bias_equals_offline(oai, offline, tiny):
    """A seeded sampled completion under a bias that bans the greedy pick and favours another token: the same
    tokens as the offline engine's (the bias moves the whole distribution, not only the argmax)."""
    unbiased = offline.chat(MESSAGES, greedy(6))[0].outputs[0].token_ids
    bias = {unbiased[0]: -100.0, unbiased[2]: 3.5}
    expected = offline.chat(MESSAGES, SamplingParams(temperature=0.9, seed=11, max_tokens=6, ignore_eos=True,
                                                     logit_bias=bias))[0].outputs[0]
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, temperature=0.9, seed=11, max_tokens=6,
                                    logit_bias={str(t): b for t, b in bias.items()},
                                    extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == expected.text and r.usage.completion_tokens == 6
    assert expected.token_ids[0] != unbiased[0]   # the ban held


def test_concurrent_requests_are_batched(daemon, oai, tiny):
    """Requests queued together share engine steps: n of them take the steps of one, not n times as many. The
    engine is frozen until the front end has handed it all n, so that none may finish before the last arrives
    however the machine's load spreads their arrivals; n x (prompt + max_tokens) fits the KV pool, so none is
    preempted either."""
    n, max_tokens = 4, 64
    messages = [[{"role": "user", "content": f"Story number {i}"}] for i in range(n)]

    def run(i, results):
        chunks = list(oai.chat.completions.create(model=tiny, messages=messages[i], max_tokens=max_tokens,
                                                  temperature=0, stream=True, stream_options={"include_usage": True},
                                                  extra_body={"ignore_eos": True}))
        results[i] = chunks[-1].usage.completion_tokens

    before = daemon.model_status(tiny)
    run(0, {})
    alone = daemon.model_status(tiny)
    single_steps = alone["steps"] - before["steps"]
    results = {}
    threads = [threading.Thread(target=run, args=(i, results)) for i in range(n)]
    with frozen_engine(alone["pid"]):
        for t in threads:
            t.start()
        daemon.wait_until(lambda s: next(m for m in s["models"] if m["name"] == tiny)["requests"] == n, 60,
                          f"the front end to hand the engine all {n} requests")
    for t in threads:
        t.join()
    together = daemon.model_status(tiny)
    together_steps = together["steps"] - alone["steps"]
    assert results == {i: max_tokens for i in range(n)}
    assert single_steps == max_tokens   # a prefill step gives the first token, then one token a step
    assert together["preemptions"] == alone["preemptions"]
    # queued together, they take exactly the steps of one; the margin only allows for the last request's message
    # still on its way through the front end's writer thread when the engine resumes
    assert together_steps < 2 * single_steps, (together_steps, single_steps)


def test_embedded_model_answers_paris(daemon):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    r = daemon.openai().chat.completions.create(model="smollm2:135m", messages=question, temperature=0,
                                                max_tokens=12, extra_body={"keep_alive": 0})
    assert r.choices[0].message.content == "The capital of France is Paris."
    assert r.choices[0].finish_reason == "stop"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2:135m"))   # transformers as the reference
    text = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    assert r.usage.prompt_tokens == len(tokenizer.encode(text, add_special_tokens=False))
    assert r.usage.completion_tokens == 8   # 7 tokens of text and <|im_end|>
    daemon.wait_until(lambda s: all(m["name"] != "smollm2:135m" for m in s["models"]), 30, "the unload")


def test_the_shared_client_streams_and_reports_refusals(daemon, oai, tiny):
    from localllm.client import DaemonError

    with daemon.client() as client:
        chunks = list(client.chat_stream(tiny, MESSAGES, max_tokens=6, temperature=0, ignore_eos=True))
        whole = client.chat(tiny, MESSAGES, max_tokens=6, temperature=0, ignore_eos=True)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == \
            whole["choices"][0]["message"]["content"]
        with pytest.raises(DaemonError) as refused:
            list(client.chat_stream("../../etc", MESSAGES))
        assert refused.value.status == 404 and "does not exist" in str(refused.value)
        assert tiny in client.models() and client.health()["status"] == "ok"


def test_overlapped_steps_behind_the_api(tiny, offline, tmp_path):
    """The GPU default (the next step queued before the last one's tokens are read back), forced on here: same
    answers as the offline engine, stop strings cut in the same place, and a dropped stream frees its blocks."""
    full = offline.chat(MESSAGES, greedy(16))[0].outputs[0]
    stop = full.text[len(full.text) // 3: len(full.text) // 3 + 3]
    expected = offline.chat(MESSAGES, greedy(16, stop=[stop]))[0].outputs[0]
    with running_daemon(tmp_path, models=[tiny], engine=TINY_ENGINE + ["overlap_steps=true"]) as daemon:
        oai = daemon.openai()
        r = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=16, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert r.choices[0].message.content == full.text and r.usage.completion_tokens == 16
        streamed = list(oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=16, temperature=0,
                                                    stop=[stop], stream=True, extra_body={"ignore_eos": True}))
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected.text
        assert streamed[-1].choices[0].finish_reason == "stop"
        stream = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=400, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))
        stream.close()
        # the first chunk may come before the engine has the request: wait for the front end to drop it too
        daemon.wait_until(lambda s: s["models"][0]["requests"] == 0 and s["models"][0]["running"] == 0
                          and s["models"][0]["waiting"] == 0 and s["models"][0]["kv_blocks"]["used"] == 0, 10,
                          "the dropped stream to be forgotten and its blocks freed")


def test_null_means_the_default_for_every_optional_field(daemon, offline, tiny):
    """OpenAI's API takes null for any optional field (some clients send every field, unset ones as null)."""
    nulls = {f: None for f in ("n", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                               "logit_bias", "stream", "stream_options", "user", "top_k", "min_p", "logprobs",
                               "top_logprobs", "max_completion_tokens", "tools", "tool_choice", "response_format")}
    body = {"model": tiny, "messages": MESSAGES, "max_tokens": 5, "ignore_eos": True, **nulls, "temperature": 0}
    with daemon.http() as http:
        answer = http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert [c["message"]["content"] for c in answer.json()["choices"]] == [
        offline.chat(MESSAGES, greedy(5))[0].outputs[0].text]   # n null: one choice


def test_a_body_without_json_content_type_is_read_as_json(daemon, offline, tiny):
    """`curl -d '{...}'` labels the body application/x-www-form-urlencoded; scripts often send no label."""
    body = json.dumps({"model": tiny, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "ignore_eos": True})
    expected = offline.generate(PROMPT, greedy(4))[0].outputs[0].text
    with daemon.http() as http:
        for headers in ({"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}, {}):
            answer = http.post("/v1/completions", content=body.encode(), headers=headers)
            assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == expected, answer.text
        garbage = http.post("/v1/completions", content=b"model=x&prompt=y",
                            headers={"content-type": "application/x-www-form-urlencoded"})
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "invalid_json"
