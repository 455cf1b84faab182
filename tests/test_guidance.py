"""The grammar a request asks for, checked without torch (as the daemon's front end checks it): what compiles,
and a message naming the problem for what does not."""
from __future__ import annotations

import json

import pytest

from localllm.guidance import grammar_of, lark_json, validate_guidance
from localllm.sampling_params import Guidance, SamplingParams


@pytest.mark.parametrize("guidance", [
    Guidance("json_object"),
    Guidance("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}},
                                        "required": ["a"], "$defs": {"unused": {"type": "string"}}})),
    Guidance("lark", 'start: "call " args\nargs: ' + lark_json({"type": "object",
                                                               "properties": {"x": {"enum": [1, 2]}}})),
])
def test_valid_grammars_pass(guidance):
    validate_guidance(guidance)


@pytest.mark.parametrize("guidance, message", [
    (Guidance("json_schema", "{not json"), "the JSON schema is not valid JSON: Expecting property name"),
    (Guidance("json_schema", "[1, 2]"), "the JSON schema must be a JSON object, got list"),
    (Guidance("json_schema", '{"type": "strin"}'), "the JSON schema is invalid or unsupported: Invalid type: strin"),
    (Guidance("json_schema", '{"type": "array", "uniqueItems": true}'),
     'the JSON schema is invalid or unsupported: Unimplemented keys: ["uniqueItems"]'),
    (Guidance("json_schema", '{"$ref": "#/$defs/gone"}'), "Pointer '/$defs/gone' does not exist"),
    (Guidance("json_schema", '{"type": "string", "pattern": "(["}'), "unclosed character class"),
    (Guidance("lark", 'start: "a" missing'), 'the Lark grammar is invalid or unsupported: at 1(8): unknown name: '
                                              '"missing"'),
])
def test_bad_grammars_are_refused_naming_the_problem(guidance, message):
    with pytest.raises(ValueError) as refused:
        validate_guidance(guidance)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_json_is_compact_unless_the_schema_asks_otherwise():
    compact = json.loads(grammar_of(Guidance("json_schema", '{"type": "object"}')))
    assert compact["grammars"][0]["json_schema"]["x-guidance"] == {
        "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    embedded = lark_json({"type": "object", "x-guidance": {"whitespace_flexible": True}})
    assert json.loads(embedded.removeprefix("%json"))["x-guidance"]["whitespace_flexible"] is True


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "regex", "value": "a+"}, "guidance kind must be one of json_object, json_schema, lark, got 'regex'"),
    ({"kind": "json_schema"}, "guidance of kind 'json_schema' needs its JSON schema (as JSON text) as the value"),
    ({"kind": "lark"}, "guidance of kind 'lark' needs its Lark grammar as the value"),
])
def test_guidance_needs_a_known_kind_and_its_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Guidance(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"ignore_eos": True}, "ignore_eos cannot be combined with guidance"),
    ({"min_tokens": 3}, "min_tokens cannot be combined with guidance"),
])
def test_the_grammar_alone_decides_where_the_output_ends(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(guidance=Guidance("json_object"), **kwargs)


def test_a_byte_level_tokenizer_whose_decoder_is_nested_is_read_as_byte_level():
    """transformers' GGUF conversion (5.17) writes a byte-level BPE's decoder as Sequence[ByteFallback, Fuse,
    Replace, ByteLevel]; read as written, llguidance takes each "Ġ" for literal bytes and refuses the model's own
    tokens of a JSON document."""
    import llguidance

    from localllm.guidance import llguidance_tokenizer, new_matcher
    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, spec["decoder"]]}
    nested = json.dumps(spec)
    document = '{"name": "the cat", "count": 12}'
    tokens = tokenizer.encode(document, add_special_tokens=False)
    assert any(tokenizer.convert_ids_to_tokens(t).startswith("Ġ") for t in tokens)
    guidance = Guidance("json_schema", json.dumps({"type": "object", "properties": {
        "name": {"type": "string"}, "count": {"type": "integer"}}, "required": ["name", "count"]}))
    eos = [tokenizer.eos_token_id]
    as_written = new_matcher(guidance, llguidance.LLTokenizer(nested, n_vocab=len(tokenizer), eos_token=eos))
    assert not as_written.consume_tokens(tokens)
    matcher = new_matcher(guidance, llguidance_tokenizer(nested, len(tokenizer), eos))
    assert matcher.consume_tokens(tokens) and matcher.is_accepting() and not matcher.is_error()
