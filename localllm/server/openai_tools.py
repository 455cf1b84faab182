"""Tools in chat requests: the checks that need no model, the conversation as the model's template takes it, the
grammar that enforces tool_choice "required" or a named function, and the calls read out of the answers.

tool_choice "none" keeps the tools in the prompt, as vLLM does (the prompt, and so the prefix cache, is the same as
on the turns that may call), and does not read calls out of the answer."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from localllm.guidance import validate_guidance
from localllm.sampling_params import Guidance, SamplingParams
from localllm.server.errors import APIError
from localllm.server.openai_format import Choice
from localllm.server.openai_schemas import ChatCompletionRequest, ChatMessage, NamedToolChoice, Tool
from localllm.tool_calling.families import MISTRAL, ToolFamily, family_for
from localllm.tool_calling.grammar import tool_call_grammar
from localllm.tool_calling.parser import ToolCall, ToolCallParser
from localllm.tool_calling.prompted import prompted_conversation

FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")   # OpenAI's rule


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def check_tools(body: ChatCompletionRequest) -> None:
    """Refuses tool definitions and a tool_choice that no model could honour."""
    if body.functions:
        raise _bad("functions is deprecated and not supported; use tools.", "functions", "unsupported_parameter")
    names = check_function_names(body.tools)
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise _bad(f"tool_choice names the function {choice.function.name!r}, which is not among the tools.",
                   "tool_choice")
    if choice == "required" and not names:
        raise _bad("tool_choice 'required' needs tools.", "tool_choice")


def check_function_names(tools: list[Tool] | None) -> list[str]:
    """The names of the functions offered, each valid and defined once."""
    names: list[str] = []
    for i, tool in enumerate(tools or []):
        name = tool.function.name
        if not FUNCTION_NAME.fullmatch(name):
            raise _bad(f"Invalid function name {name!r}: use 1 to 64 letters, digits, underscores or dashes.",
                       f"tools[{i}].function.name")
        if name in names:
            raise _bad(f"The function name {name!r} is defined twice.", f"tools[{i}].function.name")
        names.append(name)
    return names


def template_tool_calls(message: ChatMessage, i: int) -> list[dict]:
    """An assistant's past calls as chat templates take them: arguments as an object, not a JSON string."""
    if message.role != "assistant":
        raise _bad(f"Only assistant messages carry tool_calls, not {message.role!r} ones.",
                   f"messages[{i}].tool_calls")
    calls = []
    for j, call in enumerate(message.tool_calls):
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise _bad("The arguments of a tool call must be a JSON object.",
                       f"messages[{i}].tool_calls[{j}].function.arguments")
        calls.append({"id": call.id, "type": "function",
                      "function": {"name": call.function.name, "arguments": arguments}})
    return calls


@dataclass(frozen=True)
class ToolPlan:
    family: ToolFamily | None   # the model's markup; None when its template renders tools in one not read here
    functions: list[dict]       # the offered functions: {"name", "description"?, "parameters"?}
    choice: str                 # "auto", "none", "required" or the one function to call
    parallel: bool

    @property
    def reads_calls(self) -> bool:
        return bool(self.functions) and self.choice != "none"

    def check_supported(self) -> None:
        if self.reads_calls and self.family is None:
            raise _bad("This model's chat template writes tool calls in a markup localllm does not read; "
                       "only tool_choice 'none' can be served.", "tools", "unsupported_parameter")

    def conversation(self, messages: list[dict]) -> tuple[list[dict], dict]:
        """The messages and template arguments that render this conversation with its tools."""
        if self.family is not None and not self.family.renders_tools:
            return prompted_conversation(messages, self.functions), {}
        if not self.functions:
            return messages, {}
        return messages, {"tools": [{"type": "function", "function": f} for f in self.functions]}

    def sampling(self, params: SamplingParams, tokenizer) -> SamplingParams:
        """`params` held to the grammar of tool_choice "required" (calls to any of the functions) or of a named
        function (one call to it)."""
        if self.choice in ("auto", "none"):
            return params
        named = self.choice != "required"
        functions = [f for f in self.functions if f["name"] == self.choice] if named else self.functions
        marker = tokenizer.convert_tokens_to_ids("[TOOL_CALLS]") if self.family is MISTRAL else None
        guidance = Guidance("lark", tool_call_grammar(self.family, functions, self.parallel and not named, marker))
        try:   # a parameters schema the grammar cannot enforce (say with uniqueItems) is refused here, not in the engine
            validate_guidance(guidance)
        except ValueError as e:
            raise _bad(f"tool_choice {self.choice!r} needs the tools' parameters enforced, and {e}.", "tools") from None
        try:
            return dataclasses.replace(params, guidance=guidance)
        except ValueError as e:   # a setting the grammar cannot be combined with
            raise _bad(f"tool_choice {self.choice!r} cannot be served with these settings: {e}.",
                       "tool_choice") from None

    def parser(self) -> ToolCallParser | None:
        if not self.reads_calls:
            return None
        return ToolCallParser(self.family, [f["name"] for f in self.functions], self.parallel)


def tool_plan(tokenizer, body: ChatCompletionRequest) -> ToolPlan:
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        choice = choice.function.name
    return plan_tools(tokenizer, body.tools, choice, parallel=body.parallel_tool_calls is not False)


def plan_tools(tokenizer, tools: list[Tool] | None, choice: str | None, parallel: bool) -> ToolPlan:
    """The plan for offering `tools` to the model whose tokenizer this is; `choice` None: "auto" with tools, else
    "none"."""
    try:
        template = tokenizer.template_text()
    except ValueError:   # no template, or no default among several: the prompt builder refuses the request
        template = None
    functions = [t.function.model_dump(exclude_none=True, exclude={"strict"}) for t in tools or []]
    if choice is None:
        choice = "auto" if functions else "none"
    family = family_for(template) if template else None
    return ToolPlan(family, functions, choice, parallel=parallel)


def finish_reason(reason: str, calls: list[ToolCall]) -> str:
    """OpenAI's reason for an answer that ends in calls."""
    return "tool_calls" if calls and reason == "stop" else reason


def call_deltas(call: ToolCall, index: int) -> list[dict]:
    """A call in OpenAI's stream shape: its id, type and name first, then its arguments."""
    return [{"tool_calls": [{"index": index, "id": call.id, "type": "function",
                             "function": {"name": call.name, "arguments": ""}}]},
            {"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}]


def read_calls(choice: Choice, parser: ToolCallParser) -> None:
    """A whole answer's text split into its content and calls."""
    pieces = parser.feed(choice.text) + parser.finish()
    choice.text = "".join(p for p in pieces if isinstance(p, str))
    choice.tool_calls = [call.to_openai() for call in parser.calls]
    choice.finish_reason = finish_reason(choice.finish_reason, parser.calls)


def stream_deltas(pieces: list[str | ToolCall], calls: list[ToolCall]) -> list[dict]:
    """The chunk deltas of a streamed answer's pieces, in order; `calls` all the answer's calls so far."""
    out: list[dict] = []
    for piece in pieces:
        if isinstance(piece, ToolCall):
            out += call_deltas(piece, calls.index(piece))
        elif out and "content" in out[-1]:
            out[-1]["content"] += piece
        elif piece:
            out.append({"content": piece})
    return out
