"""The grammar (llguidance's Lark, with %json for the arguments) that only lets a model write calls in its family's
markup, to the given functions, with arguments valid against each function's parameter schema. It enforces
tool_choice "required" (any offered function) and a named function.

The JSON is laid out as chat templates write past calls (json.dumps' ", " and ": ", no other whitespace): the model
is held to the layout it has seen, and cannot spin in whitespace."""
from __future__ import annotations

import json

from localllm.guidance import JSON_FORMAT
from localllm.tool_calling.families import HERMES, LLAMA3_JSON, MISTRAL, SMOLLM2, ToolFamily

NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def tool_call_grammar(family: ToolFamily, functions: list[dict], parallel: bool,
                      marker_token_id: int | None = None) -> str:
    """`functions`: OpenAI function definitions ({"name", "parameters"?}), the ones the model may call.
    `marker_token_id`: the id of the token that opens calls, where the family's marker is a special token."""
    args_key = "parameters" if family is LLAMA3_JSON else "arguments"
    rules = [f"call: {' | '.join(f'call_{i}' for i in range(len(functions)))}"]
    for i, function in enumerate(functions):
        head = f'{{"name": {json.dumps(function["name"])}, "{args_key}": '
        schema = {**(function.get("parameters") or NO_PARAMETERS), "x-guidance": JSON_FORMAT}
        rules.append(f"call_{i}: {_literal(head)} args_{i} {_literal('}')}")
        rules.append(f"args_{i}: %json {json.dumps(schema)}")
    return "\n".join([_start(family, parallel, marker_token_id), *rules]) + "\n"


def _start(family: ToolFamily, parallel: bool, marker_token_id: int | None) -> str:
    if family is HERMES:
        one = _literal("<tool_call>\n") + " call " + _literal("\n</tool_call>")
        return f"start: {one}" + (f" ({_literal(chr(10))} {one})*" if parallel else "")
    if family is LLAMA3_JSON:
        return "start: call" + (f" ({_literal('; ')} call)*" if parallel else "")
    calls = "call" + (f" ({_literal(', ')} call)*" if parallel else "")
    if family is SMOLLM2:
        return f"start: {_literal('<tool_call>[')} {calls} {_literal(']</tool_call>')}"
    if family is MISTRAL:
        marker = f"<[{marker_token_id}]>" if marker_token_id is not None else _literal("[TOOL_CALLS]")
        return f"start: {marker} {_literal(' [')} {calls} {_literal(']')}"
    raise ValueError(f"no grammar for the {family.name} tool-call markup")


def _literal(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text, ensure_ascii=False)
