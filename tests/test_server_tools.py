"""Tool calling through the official openai client against a real daemon serving the embedded SmolLM2: the tools
reach the prompt, calls the model writes are read (streamed or not, alike), tool_choice "required" and a named
function give valid calls (grammar-constrained), and an agent loop (call, tool result, final answer) runs to its
end."""
from __future__ import annotations

import importlib.util
import json

import openai
import pytest
from transformers import AutoTokenizer

from daemon_helpers import running_daemon
from localllm.loader.resolve import resolve_model
from localllm.tool_calling.prompted import prompted_conversation

MODEL = "smollm2:135m"
ENGINE = ["block_size=16", "num_kv_blocks=96", "num_threads=1"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"], "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 3}}}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now, in UTC."}}
TOOLS = [WEATHER, CLOCK]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]



def past_call(i: int, city: str) -> list[dict]:
    """One earlier turn of the agent loop: the question, the call, its result, the answer."""
    call = {"id": f"call_{i}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city, "unit": "celsius"})}}
    return [{"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "sunny"},
            {"role": "assistant", "content": f"It is sunny in {city}."}]


# after three turns like it, the embedded model (greedy) calls get_weather for Paris by itself
FEW_SHOT = [*past_call(0, "London"), *past_call(1, "Rome"), *past_call(2, "Berlin"), *QUESTION]
PARIS_CALL = ("get_weather", '{"city": "Paris", "unit": "celsius"}')

requires_grammar = pytest.mark.skipif(importlib.util.find_spec("localllm.guidance") is None,
                                      reason="to be completed: needs grammar-constrained decoding (localllm.guidance)")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=[MODEL], engine=ENGINE) as d:
        yield d


@pytest.fixture(scope="module")
def oai(daemon):
    return daemon.openai()


@pytest.fixture(scope="module")
def few_shot_answer(oai):
    """The greedy non-streamed answer to FEW_SHOT with the tools, which two tests read (~40 tokens to decode)."""
    return oai.chat.completions.create(model=MODEL, messages=FEW_SHOT, tools=TOOLS, temperature=0, max_tokens=40)


def valid_arguments(name: str, arguments: str) -> bool:
    """The call's arguments hold to its function's schema (the small one above, checked by hand)."""
    args = json.loads(arguments)
    if name == "get_time":
        return args == {}
    return (set(args) <= {"city", "unit", "days"} and {"city", "unit"} <= set(args)
            and isinstance(args["city"], str) and len(args["city"]) <= 12 and args["unit"] in ("celsius", "fahrenheit")
            and (type(args.get("days", 1)) is int and 1 <= args.get("days", 1) <= 3))


def reassembled(stream) -> tuple[str | None, list[dict], str]:
    """A streamed answer put back together: content, calls (id, name, arguments) and finish reason."""
    content, calls, finish = "", [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            if call.index == len(calls):
                calls.append({"id": call.id, "name": call.function.name, "arguments": ""})
            calls[call.index]["arguments"] += call.function.arguments or ""
        finish = choice.finish_reason or finish
    return content or None, calls, finish


def test_the_tools_reach_the_prompt_in_the_models_markup(oai):
    r = oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=12)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    prompt = tokenizer.apply_chat_template(prompted_conversation(QUESTION, [t["function"] for t in TOOLS]),
                                           add_generation_prompt=True, tokenize=False)
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert all(c.function.name in ("get_weather", "get_time") for c in choice.message.tool_calls or [])


def test_auto_reads_the_call_the_model_writes_streamed_or_not(oai, few_shot_answer):
    choice = few_shot_answer.choices[0]
    assert (choice.message.content, choice.finish_reason) == (None, "tool_calls")
    (call,) = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == PARIS_CALL and call.id.startswith("call_")
    stream = oai.chat.completions.create(model=MODEL, messages=FEW_SHOT, tools=TOOLS, temperature=0, max_tokens=40,
                                         stream=True)
    content, calls, finish = reassembled(stream)
    assert (content, finish) == (None, "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls] == [PARIS_CALL]


def test_tool_choice_none_reads_no_calls(oai):
    r = oai.chat.completions.create(model=MODEL, messages=FEW_SHOT, tools=TOOLS, temperature=0, max_tokens=40,
                                    tool_choice="none")
    choice = r.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert choice.message.content == ('<tool_call>[{"name": "get_weather", "arguments": '
                                      '{"city": "Paris", "unit": "celsius"}}]</tool_call>')


def test_an_agent_loop_calls_gets_the_result_and_answers(oai, few_shot_answer):
    messages = list(FEW_SHOT)
    first = few_shot_answer
    (call,) = first.choices[0].message.tool_calls
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 degrees, cloudy"})
    final = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=40)
    answer = final.choices[0]
    assert answer.message.tool_calls is None and answer.finish_reason == "stop"
    assert "18 degrees" in answer.message.content


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
    ({"tools": [CLOCK, CLOCK]}, "tools[1].function.name"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice"),
    ({"messages": [*QUESTION, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{not json"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [*QUESTION, {"role": "tool", "content": "12:00"}]}, "messages[1].tool_call_id"),
    ({"functions": [{"name": "get_time"}]}, "functions"),
])
def test_bad_tool_requests_are_400_naming_the_parameter(oai, body, param):
    request = {"model": MODEL, "messages": QUESTION, "tools": TOOLS, "max_tokens": 4, **body}
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(**request)
    assert refused.value.status_code == 400 and refused.value.body["param"] == param


@requires_grammar
@pytest.mark.parametrize("seed", range(3))
def test_tool_choice_required_gives_a_valid_call(oai, seed):
    r = oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required",
                                    parallel_tool_calls=False, temperature=1.0, seed=seed, max_tokens=64)
    choice = r.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert valid_arguments(call.function.name, call.function.arguments), call


@requires_grammar
def test_required_calls_stream_as_they_answer(oai):
    request = dict(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=1.0, seed=1,
                   max_tokens=64)
    choice = oai.chat.completions.create(**request).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert all(valid_arguments(c.function.name, c.function.arguments) for c in choice.message.tool_calls)
    content, calls, finish = reassembled(oai.chat.completions.create(**request, stream=True))
    assert (content, finish) == (None, "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in choice.message.tool_calls]


@requires_grammar
def test_a_named_function_is_called_once(oai):
    r = oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=64,
                                    tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and valid_arguments("get_weather", call.function.arguments)
    assert r.choices[0].finish_reason == "tool_calls"


@requires_grammar
def test_an_agent_loop_with_a_forced_first_call(oai):
    messages = list(QUESTION)
    first = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=64,
                                        tool_choice="required", parallel_tool_calls=False)
    (call,) = first.choices[0].message.tool_calls
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    result = "18 degrees, sunny" if call.function.name == "get_weather" else "12:00 UTC"
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    final = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                        temperature=0, max_tokens=24)
    answer = final.choices[0]
    assert answer.message.tool_calls is None and answer.message.content
    assert answer.finish_reason in ("stop", "length")
    # the call and its result were in the second prompt
    assert final.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
