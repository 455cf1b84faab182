"""/v1/responses through the official `openai` client against a real daemon: the answer equals the offline chat of
the same conversation (instructions as the system message, previous_response_id's kept conversation before the
input), streamed as the Responses event sequence or whole; what is not supported is refused with 400."""
from __future__ import annotations

import openai
import pytest

from localllm import LLM, SamplingParams
from localllm.server.responses import ResponseStore, StoredResponse

STREAM_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
                 "response.content_part.added"]
CLOSING_EVENTS = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def oai(daemon):
    return daemon.openai()


@pytest.fixture(scope="module")
def offline(tiny):
    with LLM(tiny, block_size=4, num_kv_blocks=128) as llm:
        yield llm


def greedy(max_tokens, **kw):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def test_a_whole_response_equals_the_offline_chat(oai, offline, tiny):
    r = oai.responses.create(model=tiny, input="The quick brown fox", instructions="Be brief.", max_output_tokens=8,
                             temperature=0, extra_body={"ignore_eos": True})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]
    expected = offline.chat(messages, greedy(8))[0]
    assert r.object == "response" and r.id.startswith("resp-") and r.model == tiny
    assert r.output_text == expected.outputs[0].text and r.output[0].role == "assistant"
    assert (r.status, r.incomplete_details.reason, r.output[0].status) == ("incomplete", "max_output_tokens",
                                                                          "incomplete")
    assert (r.usage.input_tokens, r.usage.output_tokens) == (len(expected.prompt_token_ids), 8)
    assert r.usage.total_tokens == r.usage.input_tokens + 8
    assert (r.instructions, r.max_output_tokens, r.temperature) == ("Be brief.", 8, 0)


def test_the_stream_is_the_responses_event_sequence(oai, offline, tiny):
    events = list(oai.responses.create(model=tiny, input=[{"role": "user", "content": "Paged attention"}],
                                       max_output_tokens=6, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True}))
    expected = offline.chat([{"role": "user", "content": "Paged attention"}], greedy(6))[0].outputs[0].text
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == STREAM_EVENTS + ["response.output_text.delta"] * deltas + CLOSING_EVENTS + \
        ["response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected
    done = events[-1].response
    assert done.id == events[0].response.id and done.output_text == expected and done.usage.output_tokens == 6
    assert events[-4].text == expected and events[-2].item.content[0].text == expected


def test_a_response_that_ends_on_its_own_completes_and_the_stream_helper_reads_it(oai, offline, tiny):
    messages = [{"role": "user", "content": "The lazy dog"}]
    stop = offline.chat(messages, greedy(8))[0].outputs[0].token_ids[4]   # the fifth token ends it
    expected = offline.chat(messages, greedy(8, stop_token_ids=[stop]))[0].outputs[0]
    with oai.responses.stream(model=tiny, input="The lazy dog", max_output_tokens=8, temperature=0,
                              extra_body={"ignore_eos": True, "stop_token_ids": [stop]}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[-1] == "response.completed" and final.status == "completed"
    assert final.output_text == expected.text and final.usage.output_tokens == len(expected.token_ids)


def test_previous_response_id_continues_a_kept_conversation(oai, offline, tiny):
    first = oai.responses.create(model=tiny, input="Hi", instructions="Answer in French.", max_output_tokens=5,
                                 temperature=0, extra_body={"ignore_eos": True})
    second = oai.responses.create(model=tiny, previous_response_id=first.id, max_output_tokens=5, temperature=0,
                                  input=[{"role": "user", "content": [{"type": "input_text", "text": "More"}]}],
                                  extra_body={"ignore_eos": True})
    # the instructions of the first response are not carried over
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first.output_text},
                {"role": "user", "content": "More"}]
    expected = offline.chat(messages, greedy(5))[0]
    assert second.output_text == expected.outputs[0].text and second.previous_response_id == first.id
    assert second.usage.input_tokens == len(expected.prompt_token_ids)
    assert oai.responses.retrieve(second.id).output_text == second.output_text
    oai.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(second.id)
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=tiny, previous_response_id=second.id, input="Again")
    assert refused.value.code == "previous_response_not_found"


def test_store_false_keeps_nothing(oai, tiny):
    r = oai.responses.create(model=tiny, input="Hi", max_output_tokens=2, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)


def _chat_logprobs(oai, tiny, top: int) -> list[dict]:
    """The chat completion's logprobs of the same greedy answer, as plain dicts."""
    chat = oai.chat.completions.create(model=tiny, messages=[{"role": "user", "content": "Paged attention"}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=top,
                                       extra_body={"ignore_eos": True})
    return [entry.model_dump() for entry in chat.choices[0].logprobs.content]


def test_output_text_logprobs_are_the_chat_completions(oai, tiny):
    expected = _chat_logprobs(oai, tiny, 2)
    r = oai.responses.create(model=tiny, input="Paged attention", max_output_tokens=5, temperature=0,
                             include=["message.output_text.logprobs"], top_logprobs=2,
                             extra_body={"ignore_eos": True})
    logprobs = [entry.model_dump() for entry in r.output[0].content[0].logprobs]
    assert logprobs == expected and len(logprobs) == 5 and all(len(e["top_logprobs"]) == 2 for e in logprobs)
    assert r.top_logprobs == 2


def test_streamed_logprobs_come_with_their_deltas(oai, tiny):
    expected = _chat_logprobs(oai, tiny, 0)
    events = list(oai.responses.create(model=tiny, input="Paged attention", max_output_tokens=5, temperature=0,
                                       include=["message.output_text.logprobs"], stream=True,
                                       extra_body={"ignore_eos": True}))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    streamed = [{"token": lp.token, "logprob": lp.logprob} for e in deltas for lp in e.logprobs]
    assert streamed == [{"token": e["token"], "logprob": e["logprob"]} for e in expected]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert [lp.model_dump()["token"] for lp in done.logprobs] == [e["token"] for e in expected]
    final = events[-1].response.output[0].content[0]
    assert [lp.model_dump() for lp in final.logprobs] == expected


def test_without_include_there_are_no_logprobs(oai, tiny):
    r = oai.responses.create(model=tiny, input="Paged attention", max_output_tokens=3, temperature=0,
                             include=["reasoning.encrypted_content"])
    assert r.output[0].content[0].logprobs == [] and r.top_logprobs is None


@pytest.mark.parametrize("body, param, message", [
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].type",
     "Only message items"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content",
     "Only text content parts"),
    ({"input": "Hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools", "not supported"),
    ({"input": "Hi", "background": True}, "background", "not supported"),
    ({"input": "Hi", "max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
    ({"input": []}, "input", "must not be empty"),
    ({"input": "Hi", "include": ["message.output_text.logprobs", "everything"]}, "include[1]", "Invalid value"),
    ({"input": "Hi", "top_logprobs": 21}, "top_logprobs", "must be in [0, 20]"),
])
def test_unsupported_input_gets_400(daemon, tiny, body, param, message):
    with daemon.http() as http:
        response = http.post("/v1/responses", json={"model": tiny, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"]


def test_the_store_keeps_the_most_recently_used():
    store = ResponseStore(capacity=2)
    for name in ("a", "b"):
        store.put(name, StoredResponse({"id": name}, []))
    assert store.get("a") is not None   # now b is the least recently used
    store.put("c", StoredResponse({"id": "c"}, []))
    assert [store.get(n) is not None for n in ("a", "b", "c")] == [True, False, True]
