"""The tool-call markups localllm reads, one entry per model family, and the choice of one from a chat template.

A family is chosen from the template alone: the markup a model writes its calls in is the markup its template
writes past calls in, whatever the architecture (a Mistral GGUF is "llama" to llama.cpp, SmolLM2 is a Llama)."""
from __future__ import annotations

import re
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass


def openai_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def mistral_call_id() -> str:
    # Mistral's template refuses any id but 9 letters and digits, and clients send the ids back in the history
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))


@dataclass(frozen=True)
class ToolFamily:
    name: str
    open_markers: tuple[str, ...]   # text that starts call markup anywhere in the output
    close_marker: str | None        # text that ends one call's markup; None: the end of the JSON value does
    bare_start: str                 # characters that start a call without a marker at the start of the output
    separators: str                 # characters allowed between two unmarked calls, besides whitespace
    renders_tools: bool             # False: the template ignores tools, which localllm describes itself
    new_call_id: Callable[[], str] = openai_call_id


# Qwen2.5, Qwen3 (and Hermes-style templates): <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, once
# per call
HERMES = ToolFamily("hermes", ("<tool_call>",), "</tool_call>", "", "", renders_tools=True)
# Llama 3.1 / 3.2: the answer is {"name": ..., "parameters": {...}}, maybe after <|python_tag|>, calls split by ";"
LLAMA3_JSON = ToolFamily("llama3_json", ("<|python_tag|>",), None, "{", ";", renders_tools=True)
# Mistral: [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]; [TOOL_CALLS] is a special token, dropped from
# the text unless skip_special_tokens is false, so a list that starts the answer is a call list too
MISTRAL = ToolFamily("mistral", ("[TOOL_CALLS]",), None, "[", "", renders_tools=True,
                     new_call_id=mistral_call_id)
# SmolLM2's templates say nothing of tools; the model learned <tool_call>[{"name": ..., "arguments": ...}]</tool_call>
# after a system prompt listing them, which localllm writes for any template that ignores tools
SMOLLM2 = ToolFamily("smollm2", ("<tool_call>",), "</tool_call>", "", "", renders_tools=False)

FAMILIES = {f.name: f for f in (HERMES, LLAMA3_JSON, MISTRAL, SMOLLM2)}

_MENTIONS_TOOLS = re.compile(r"\btools\b")


def family_for(template: str) -> ToolFamily | None:
    """The family whose markup this template writes, SMOLLM2 for a template that ignores tools, or None for a
    template that renders tools in a markup localllm does not read."""
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return HERMES
    if "<|start_header_id|>" in template and ("<|python_tag|>" in template or '"parameters"' in template):
        return LLAMA3_JSON
    if not _MENTIONS_TOOLS.search(template):
        return SMOLLM2
    return None
