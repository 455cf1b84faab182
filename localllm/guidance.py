"""From a Guidance (sampling_params.py) to an llguidance grammar, and the checks that refuse a bad one with a message
naming what is wrong. llguidance needs no torch, so the daemon's front end checks a request's grammar here and
answers 400 before the engine sees it; the engine builds its matchers with the same functions."""
from __future__ import annotations

import json

import llguidance

from localllm.errors import one_line
from localllm.sampling_params import Guidance

# JSON as json.dumps writes it: no free whitespace between tokens. With llguidance's default (any amount of
# whitespace allowed) a model can pad its output with newlines until max_tokens and never close the object.
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT = {"type": "object"}
MAX_MESSAGE = 500   # llguidance's messages may quote a large part of the grammar
_WHAT = {"json_object": "the JSON object grammar", "json_schema": "the JSON schema", "lark": "the Lark grammar"}


def lark_json(schema: dict) -> str:
    """A Lark rule body `%json{...}` for `schema`, in JSON_FORMAT (unless the schema's own "x-guidance" says
    otherwise): how a Lark grammar embeds a JSON value, e.g. the arguments of a tool call."""
    return "%json" + json.dumps({**schema, "x-guidance": {**JSON_FORMAT, **schema.get("x-guidance", {})}})


def grammar_of(guidance: Guidance) -> str:
    """The llguidance grammar (its JSON text) of a guidance; ValueError for a schema that is not JSON."""
    if guidance.kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(guidance.value)
    schema = ANY_JSON_OBJECT if guidance.kind == "json_object" else _schema(guidance.value)
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_FORMAT)


def _schema(text: str) -> dict:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"the JSON schema must be a JSON object, got {type(schema).__name__}")
    return schema


def llguidance_tokenizer(tokenizer_json: str, n_vocab: int, eos_token_ids: list[int] | None) -> llguidance.LLTokenizer:
    """llguidance's tokenizer for a tokenizer.json. llguidance tells a byte-level BPE (GPT-2's Ġ for a space) by its
    ByteLevel decoder; transformers' GGUF conversion (5.17, for instance) nests that decoder in a Sequence after
    ByteFallback, Fuse and a Replace of ▁, which change nothing for a byte-level vocabulary but hide it, so that
    llguidance takes "Ġ" for two literal bytes and refuses the model's own tokens. Such a decoder is given as the
    plain ByteLevel it ends with."""
    spec = json.loads(tokenizer_json)
    decoder = spec.get("decoder") or {}
    parts = (decoder.get("decoders") or []) if decoder.get("type") == "Sequence" else []
    if parts and parts[-1].get("type") == "ByteLevel" and \
            {p.get("type") for p in parts[:-1]} <= {"ByteFallback", "Fuse", "Replace"}:
        spec["decoder"] = parts[-1]
        tokenizer_json = json.dumps(spec)
    return llguidance.LLTokenizer(tokenizer_json, n_vocab=n_vocab, eos_token=eos_token_ids)


def validate_guidance(guidance: Guidance) -> None:
    """Raises ValueError naming what is wrong when the grammar does not compile, or uses what llguidance does not
    implement (say the JSON-schema keyword uniqueItems): refused rather than silently not enforced."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar_of(guidance))
    if is_error:
        raise _refusal(guidance, messages[0])


def new_matcher(guidance: Guidance, tokenizer: llguidance.LLTokenizer, grammar: str | None = None
                ) -> llguidance.LLMatcher:
    """A matcher at the start of the grammar (grammar_of(guidance), unless given), for a model's tokenizer;
    ValueError as validate_guidance's."""
    matcher = llguidance.LLMatcher(tokenizer, grammar or grammar_of(guidance), log_level=0)
    if matcher.is_error():
        raise _refusal(guidance, matcher.get_error())
    return matcher


def _refusal(guidance: Guidance, message: str) -> ValueError:
    return ValueError(f"{_WHAT[guidance.kind]} is invalid or unsupported: "
                      f"{one_line(Exception(message))[:MAX_MESSAGE]}")
