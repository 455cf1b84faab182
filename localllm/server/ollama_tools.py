"""Tools on the Ollama API's /api/chat, through the machinery of chat completions (openai_tools): the functions
offered and the past calls rendered by the model's template (or, for a template that ignores tools, in the markup
localllm writes for it), and the calls read out of the answer, handed back in Ollama's shape:
{"function": {"name": ..., "arguments": {...}}}. Ollama has no tool_choice: the model calls a function or not."""
from __future__ import annotations

import json

from localllm.server.errors import APIError
from localllm.server.ollama_schemas import ChatRequest
from localllm.server.openai_requests import render_template, require_template
from localllm.server.openai_tools import ToolPlan, plan_tools
from localllm.tool_calling.parser import ToolCall, ToolCallParser


def tool_plan(tokenizer, body: ChatRequest) -> ToolPlan:
    """The functions offered (checked at the door, openai_tools.check_function_names) as the model takes them."""
    return plan_tools(tokenizer, body.tools, None, parallel=True)


def chat_prompt(tokenizer, name: str, body: ChatRequest, plan: ToolPlan) -> list[int]:
    """The conversation, its tools and past calls included, through the model's template, as token ids."""
    require_template(tokenizer, name, "use /api/generate with raw")
    plan.check_supported()
    messages, template_kwargs = plan.conversation(_template_messages(body))
    return tokenizer.encode(render_template(tokenizer, messages, **template_kwargs), add_special_tokens=False)


def _template_messages(body: ChatRequest) -> list[dict]:
    messages = []
    for i, message in enumerate(body.messages):
        entry = {"role": message.role, "content": message.content or ""}
        if message.tool_calls:
            if message.role != "assistant":
                raise APIError(400, f"Only assistant messages carry tool_calls, not {message.role!r} ones.",
                               param=f"messages[{i}].tool_calls", code="invalid_value")
            entry["tool_calls"] = [{"type": "function", "function": {"name": call.function.name,
                                                                     "arguments": call.function.arguments}}
                                   for call in message.tool_calls]
        if message.role == "tool" and message.tool_name:
            entry["name"] = message.tool_name
        messages.append(entry)
    return messages


def read(parser: ToolCallParser | None, text: str, final: bool) -> tuple[str, list[dict]]:
    """The content and the calls (Ollama's shape) in the next piece of an answer; `final` at its end."""
    if parser is None:
        return text, []
    pieces = parser.feed(text) + (parser.finish() if final else [])
    return ("".join(p for p in pieces if isinstance(p, str)),
            [ollama_call(p) for p in pieces if isinstance(p, ToolCall)])


def ollama_call(call: ToolCall) -> dict:
    return {"function": {"name": call.name, "arguments": json.loads(call.arguments)}}
