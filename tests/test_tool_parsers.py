"""Tool calls read out of model output, for each family's markup, as the models write it: one call, parallel calls,
text before a call, malformed markup (which stays content, as written), calls to functions never offered. The
streamed answer, put back together as the openai client does, must equal the non-streamed one for every way of
cutting the output into deltas; streamed content never shows call markup."""
from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localllm.server.openai_format import Choice
from localllm.server.openai_tools import read_calls, stream_deltas
from localllm.tool_calling.families import HERMES, LLAMA3_JSON, MISTRAL, SMOLLM2, mistral_call_id
from localllm.tool_calling.parser import ToolCallParser

NAMES = {"get_weather", "get_time"}
PARIS = {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}
ROME = {"name": "get_weather", "arguments": '{"city": "Rome \\"Città\\" {x}"}'}
NOW = {"name": "get_time", "arguments": "{}"}

# (family, output, expected content, expected calls)
OUTPUTS = {
    "qwen single": (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
                            '"celsius"}}\n</tool_call>', None, [PARIS]),
    "qwen parallel": (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome \\"Città\\" {x}"}}'
                              '\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
                      None, [ROME, NOW]),
    "qwen3 thinking, text, then a call": (
        HERMES, '<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n{"name": '
                '"get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
        "<think>\nThe user wants the weather.\n</think>\n\nLet me check.", [PARIS]),
    "qwen malformed JSON": (HERMES, 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n'
                                    '</tool_call>', 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": '
                                                    '{"city": "Paris"}\n</tool_call>', []),
    "qwen unknown function": (HERMES, '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
                              '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>', []),
    "qwen marker in prose": (HERMES, "Models write <tool_call> tags; a < b <tool",
                             "Models write <tool_call> tags; a < b <tool", []),
    "qwen call without its closing tag": (HERMES, '<tool_call>\n{"name": "get_time", "arguments": {}}\n', None,
                                          [NOW]),
    "qwen call cut short": (HERMES, '<tool_call>\n{"name": "get_time", "argu',
                            '<tool_call>\n{"name": "get_time", "argu', []),
    "plain answer keeps its whitespace": (HERMES, "  Hello,\n\nworld.  \n", "  Hello,\n\nworld.  \n", []),
    "llama single": (LLAMA3_JSON, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
                     None, [PARIS]),
    "llama python_tag, parallel": (
        LLAMA3_JSON, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome \\"Città\\" {x}"}}; '
                     '{"name": "get_time", "parameters": {}}', None, [ROME, NOW]),
    "llama text": (LLAMA3_JSON, "{Braces} start this answer, not a call.", "{Braces} start this answer, not a call.",
                   []),
    "llama malformed": (LLAMA3_JSON, '{"name": "get_weather", "parameters": {"city": Paris}}',
                        '{"name": "get_weather", "parameters": {"city": Paris}}', []),
    "llama text then JSON is text": (LLAMA3_JSON, 'Call: {"name": "get_time", "parameters": {}}',
                                     'Call: {"name": "get_time", "parameters": {}}', []),
    "mistral, marker dropped from the text": (
        MISTRAL, ' [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
                 '{"name": "get_time", "arguments": {}}]', None, [PARIS, NOW]),
    "mistral, marker kept": (MISTRAL, '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]', None, [NOW]),
    "mistral markdown link": (MISTRAL, "[the docs](http://x) say [so]", "[the docs](http://x) say [so]", []),
    "smollm2 list": (SMOLLM2, '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
                              '"celsius"}}, {"name": "get_time", "arguments": {}}]</tool_call>', None, [PARIS, NOW]),
    "smollm2 stringified arguments": (SMOLLM2, 'OK <tool_call>[{"name": "get_time", "arguments": "{}"}]</tool_call>',
                                      "OK", [NOW]),
}


def counter_ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def parser(family, parallel: bool = True) -> ToolCallParser:
    return ToolCallParser(family, NAMES, parallel, new_call_id=counter_ids())


def whole(family, output: str, parallel: bool = True) -> dict:
    """The non-streamed message, as the server builds it."""
    choice = Choice(text=output, finish_reason="stop")
    read_calls(choice, parser(family, parallel))
    return {"content": choice.text or None if choice.tool_calls else choice.text, "tool_calls": choice.tool_calls,
            "finish_reason": choice.finish_reason}


def streamed(family, pieces: list[str], parallel: bool = True) -> tuple[dict, list[dict]]:
    """The streamed message put back together as the openai client does, and the deltas it came in."""
    p, deltas = parser(family, parallel), []
    for i, piece in enumerate(pieces):
        deltas += stream_deltas(p.feed(piece) + (p.finish() if i == len(pieces) - 1 else []), p.calls)
    content, calls = "", []
    for delta in deltas:
        content += delta.get("content", "")
        for c in delta.get("tool_calls", []):
            if c["index"] == len(calls):   # the first delta of a call: id, type and name
                assert set(c) == {"index", "id", "type", "function"} and c["function"]["arguments"] == ""
                calls.append({"id": c["id"], "type": c["type"], "function": dict(c["function"])})
            else:
                assert set(c) == {"index", "function"} and set(c["function"]) == {"arguments"}
                calls[c["index"]]["function"]["arguments"] += c["function"]["arguments"]
    finish = "tool_calls" if calls else "stop"
    return {"content": content or None if calls else content, "tool_calls": calls, "finish_reason": finish}, deltas


@pytest.mark.parametrize("name", OUTPUTS)
def test_calls_and_content_of_recorded_outputs(name):
    family, output, content, calls = OUTPUTS[name]
    message = whole(family, output)
    assert message["content"] == content
    assert [c["function"] for c in message["tool_calls"]] == calls
    assert all(c["type"] == "function" and json.loads(c["function"]["arguments"]) is not None
               for c in message["tool_calls"])
    assert message["finish_reason"] == ("tool_calls" if calls else "stop")


@pytest.mark.parametrize("name", OUTPUTS)
def test_streaming_one_character_at_a_time_equals_the_whole_answer(name):
    family, output, _, _ = OUTPUTS[name]
    message, deltas = streamed(family, list(output))
    assert message == whole(family, output)
    markup = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]")
    if message["tool_calls"]:   # a valid call's markup never shows, not even its first characters
        shown = "".join(d.get("content", "") for d in deltas)
        assert not any(m in shown for m in markup) and not shown.endswith("<")


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(OUTPUTS)), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_any_cut_into_deltas_equals_the_whole_answer(name, cuts):
    family, output, _, _ = OUTPUTS[name]
    bounds = sorted({0, len(output), *(c % (len(output) + 1) for c in cuts)})
    pieces = [output[a:b] for a, b in zip(bounds, bounds[1:])] or [""]
    assert streamed(family, pieces)[0] == whole(family, output)


def test_a_call_streams_its_name_before_its_arguments():
    _, deltas = streamed(HERMES, ["Checking.\n<tool_call>\n", '{"name": "get_time", "arguments": {}}\n</tool_call>'])
    assert deltas == [{"content": "Checking."},
                      {"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
                                       "function": {"name": "get_time", "arguments": ""}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}]


def test_markup_is_held_back_only_while_it_may_be_a_marker():
    p = parser(HERMES)
    assert p.feed("It is 3 <") == ["It is 3"]
    assert p.feed("tool_ca") == []
    assert p.feed("ll> is a tag, <tool_cal") == [" <tool_call>", " is a tag,"]
    assert p.feed("ls are not") == [" <tool_calls are not"]
    assert p.finish() == []


def test_parallel_tool_calls_false_keeps_the_first_call():
    output = OUTPUTS["qwen parallel"][1]
    message = whole(HERMES, output, parallel=False)
    assert [c["function"] for c in message["tool_calls"]] == [ROME] and message["content"] is None
    assert streamed(HERMES, list(output), parallel=False)[0] == message


def test_a_call_cut_by_max_tokens_ends_with_length():
    choice = Choice(text='<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n<tool_call>\n{"na',
                    finish_reason="length")
    read_calls(choice, parser(HERMES))
    assert [c["function"] for c in choice.tool_calls] == [NOW]
    assert choice.finish_reason == "length" and choice.text == '<tool_call>\n{"na'


def test_mistral_ids_are_nine_letters_or_digits_as_its_template_demands():
    ids = {mistral_call_id() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 9 and i.isalnum() and i.isascii() for i in ids)
    p = ToolCallParser(MISTRAL, NAMES)
    (call,) = p.feed('[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]') + p.finish()
    assert len(call.id) == 9 and call.id.isalnum()
