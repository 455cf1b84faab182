"""response_format through a real daemon and the official `openai` client: what the API returns under a JSON schema
equals what the offline LLM gives (token for token), validates, streams the same, ends with "length" when
max_tokens cuts it, and a bad schema is a 400 naming the problem; `parse()` with a pydantic model works on the
embedded model."""
from __future__ import annotations

import json
from typing import Literal

import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel

from daemon_helpers import running_daemon
from localllm import LLM, SamplingParams
from localllm.sampling_params import Guidance

EMBEDDED = "smollm2:135m"
SCHEMA = {
    "type": "object",
    "properties": {"word": {"type": "string", "maxLength": 5}, "count": {"type": "integer", "minimum": 1,
                                                                          "maximum": 12},
                   "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
                   "kind": {"enum": ["a", "b"]}},
    "required": ["word", "count", "flags", "kind"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "record", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "user", "content": "Give me a record."}]


class City(BaseModel):
    name: str
    country: str
    continent: Literal["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]


@pytest.fixture(scope="module")
def oai(tiny, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=[tiny, EMBEDDED]) as daemon:
        yield daemon.openai()


@pytest.fixture(scope="module")
def offline(tiny):
    return LLM(tiny, block_size=4, num_kv_blocks=128)


def offline_params(**kw) -> SamplingParams:
    return SamplingParams(guidance=Guidance("json_schema", json.dumps(SCHEMA)), **kw)


def test_chat_under_a_schema_equals_offline_streamed_or_not(oai, offline, tiny):
    expected = offline.chat(MESSAGES, offline_params(temperature=0, max_tokens=120))[0].outputs[0]
    jsonschema_rs.validate(SCHEMA, json.loads(expected.text))
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, temperature=0, max_completion_tokens=120,
                                    response_format=RESPONSE_FORMAT)
    assert r.choices[0].message.content == expected.text and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(expected.token_ids)
    chunks = list(oai.chat.completions.create(model=tiny, messages=MESSAGES, temperature=0, max_tokens=120,
                                              response_format=RESPONSE_FORMAT, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def test_completions_with_n_seeded_samples_follow_the_schema(oai, offline, tiny):
    expected = offline.generate("Record:", offline_params(temperature=1.0, seed=11, n=3, max_tokens=120))[0]
    stream = oai.completions.create(model=tiny, prompt="Record:", temperature=1.0, seed=11, n=3, max_tokens=120,
                                    stream=True, extra_body={"response_format": RESPONSE_FORMAT})
    texts = ["", "", ""]
    for chunk in stream:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts == [c.text for c in expected.outputs] and len(set(texts)) == 3
    for text in texts:
        jsonschema_rs.validate(SCHEMA, json.loads(text))


def test_max_tokens_cuts_a_schema_answer_with_length(oai, tiny):
    r = oai.chat.completions.create(model=tiny, messages=MESSAGES, max_tokens=4, response_format=RESPONSE_FORMAT)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    assert '{"word": "'.startswith(r.choices[0].message.content)
    chunks = list(oai.completions.create(model=tiny, prompt="Record:", max_tokens=4, stream=True,
                                         extra_body={"response_format": RESPONSE_FORMAT}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_a_bad_schema_is_a_400_naming_the_problem(oai, tiny):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=tiny, messages=MESSAGES, response_format=bad)
    error = refused.value.body
    assert error["param"] == "response_format" and error["code"] == "invalid_value"
    assert 'the JSON schema is invalid or unsupported: Unimplemented keys: ["uniqueItems"]' in error["message"]


def test_responses_take_the_schema_as_text_format(oai, offline, tiny):
    expected = offline.chat(MESSAGES, offline_params(temperature=0, max_tokens=120))[0].outputs[0]
    r = oai.responses.create(model=tiny, input=MESSAGES[0]["content"], temperature=0, max_output_tokens=120,
                             text={"format": {"type": "json_schema", "name": "record", "schema": SCHEMA,
                                              "strict": True}})
    assert r.status == "completed" and r.output_text == expected.text
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=tiny, input="x", text={"format": {"type": "xml"}})
    assert refused.value.body["param"] == "text.format.type"


def test_parse_with_a_pydantic_model_on_the_embedded_model(oai):
    messages = [{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}]
    r = oai.chat.completions.parse(model=EMBEDDED, messages=messages, response_format=City, temperature=0,
                                   max_tokens=60)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and r.choices[0].finish_reason == "stop"
    assert city.name == "Paris" and city.continent == "Europe"


def test_json_object_on_the_embedded_model(oai):
    r = oai.chat.completions.create(model=EMBEDDED, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                                    response_format={"type": "json_object"}, temperature=0, max_tokens=60)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
