"""The grammar for tool_choice "required" / a named function lets a model write nothing but valid calls: a random
walk over the tokens the grammar allows (the worst a random-weight model can do) always ends in markup that the
family's parser reads back into calls to offered functions, with arguments valid against their schemas, for every
family, one or several calls. Tokens are the embedded SmolLM2's, so markers are spelled out as text."""
from __future__ import annotations

import json
import random

import llguidance
import llguidance.hf
import numpy as np
import pytest
from transformers import AutoTokenizer

from localllm.loader.resolve import resolve_model
from localllm.tool_calling.families import HERMES, LLAMA3_JSON, MISTRAL, SMOLLM2
from localllm.tool_calling.grammar import tool_call_grammar
from localllm.tool_calling.parser import ToolCallParser

WEATHER = {"name": "get_weather", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city", "unit"], "properties": {
        "city": {"type": "string", "maxLength": 8},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "where": {"type": "object", "additionalProperties": False, "required": ["lat"],
                  "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}}},
        "tags": {"type": "array", "maxItems": 2, "items": {"type": "boolean"}}}}}
CLOCK = {"name": "get_time"}
FUNCTIONS = [WEATHER, CLOCK]
MAX_TOKENS = 400


@pytest.fixture(scope="module")
def tokenizer():
    hf = AutoTokenizer.from_pretrained(resolve_model("smollm2:135m"))
    return hf, llguidance.hf.from_tokenizer(hf)


def random_walk(tokenizer, grammar: str, seed: int) -> str:
    """Tokens drawn at random among those the grammar allows, until it allows only the end or ends by choice."""
    hf, ll = tokenizer
    matcher = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_lark(grammar))
    assert not matcher.is_error(), matcher.get_error()
    rng, ids = random.Random(seed), []
    while not matcher.is_stopped() and len(ids) < MAX_TOKENS:
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = np.flatnonzero(bits[:ll.vocab_size])
        if ll.eos_token in allowed and rng.random() < 0.5:   # free to end: a coin decides, or the walk never ends
            break
        token = int(rng.choice(allowed))
        if token == ll.eos_token:
            break
        assert matcher.consume_token(token), matcher.get_error()
        ids.append(token)
    assert len(ids) < MAX_TOKENS, "the walk did not end"
    return hf.decode(ids)


def valid(call) -> bool:
    args = json.loads(call.arguments)
    if call.name == "get_time":
        return args == {}
    return ({"city", "unit"} <= set(args) <= {"city", "unit", "days", "where", "tags"}
            and isinstance(args["city"], str) and len(args["city"]) <= 8 and args["unit"] in ("celsius", "fahrenheit")
            and (type(args.get("days", 1)) is int and 1 <= args.get("days", 1) <= 7)
            and (set(args.get("where", {"lat": 0})) == {"lat"} and -90 <= args.get("where", {"lat": 0})["lat"] <= 90)
            and all(type(t) is bool for t in args.get("tags", [])) and len(args.get("tags", [])) <= 2)


@pytest.mark.parametrize("parallel", [False, True], ids=["one call", "parallel"])
@pytest.mark.parametrize("family", [HERMES, LLAMA3_JSON, MISTRAL, SMOLLM2], ids=lambda f: f.name)
def test_every_walk_under_the_grammar_is_valid_calls(tokenizer, family, parallel):
    grammar = tool_call_grammar(family, FUNCTIONS, parallel)
    names_seen = set()
    for seed in range(24):
        text = random_walk(tokenizer, grammar, seed)
        parser = ToolCallParser(family, ["get_weather", "get_time"], parallel)
        content = [p for p in parser.feed(text) + parser.finish() if isinstance(p, str)]
        assert content == [] and parser.calls, text
        assert parallel or len(parser.calls) == 1
        assert all(valid(call) for call in parser.calls), text
        names_seen |= {call.name for call in parser.calls}
    assert names_seen == {"get_weather", "get_time"}   # the walks reach both functions


def test_a_named_function_grammar_only_calls_it(tokenizer):
    grammar = tool_call_grammar(HERMES, [CLOCK], parallel=False)
    for seed in range(3):
        assert random_walk(tokenizer, grammar, seed) == '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


def test_the_mistral_marker_is_its_special_token_where_the_vocabulary_has_one():
    grammar = tool_call_grammar(MISTRAL, [CLOCK], parallel=False, marker_token_id=5)
    assert grammar.startswith('start: <[5]> " ["')
