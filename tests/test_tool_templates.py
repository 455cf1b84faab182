"""Tool conversations reach the model as transformers' apply_chat_template(messages, tools=...,
add_generation_prompt=True) renders them: an OpenAI request (arguments as JSON strings, content null next to calls)
goes through the server's conversion and our torch-free renderer, and the text must equal transformers' rendering
of the same conversation in its own convention (arguments as objects). Templates in each family's style
(tool_templates.py), and the embedded SmolLM2, whose template ignores tools."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
from transformers import AutoTokenizer

from localllm.loader.resolve import resolve_model
from localllm.loader.tokenizer import Tokenizer
from localllm.server.errors import APIError
from localllm.server.openai_requests import chat_text
from localllm.server.openai_schemas import ChatCompletionRequest
from localllm.server.openai_tools import tool_plan
from localllm.tool_calling.families import HERMES, LLAMA3_JSON, MISTRAL, SMOLLM2, family_for
from tiny_models import tokenizer_dirs_with_templates
from tool_templates import TOOL_TEMPLATES

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "when": {"type": "object", "properties": {"day": {"type": "integer", "minimum": 0}}}},
        "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now, in UTC."}}
TOOLS = [WEATHER, CLOCK]


def call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


PARIS = call("abcDEF123", "get_weather", {"city": "Paris", "unit": "celsius", "when": {"day": 0}})
NOW = call("xyz987QWE", "get_time", {})
USER = {"role": "user", "content": "Weather in Paris? And the time, été 🙂."}
CONVERSATIONS = {
    "first turn": [{"role": "system", "content": "Be brief."}, USER],
    "call and result": [USER, {"role": "assistant", "content": None, "tool_calls": [PARIS]},
                        {"role": "tool", "tool_call_id": "abcDEF123", "content": "18 degrees, sunny"}],
    "parallel calls": [USER, {"role": "assistant", "content": None, "tool_calls": [PARIS, NOW]},
                       {"role": "tool", "tool_call_id": "abcDEF123", "content": "18 degrees"},
                       {"role": "tool", "tool_call_id": "xyz987QWE", "content": "12:00"}],
    "text, call, answer, next question": [
        {"role": "system", "content": "Be brief."}, USER,
        {"role": "assistant", "content": "Let me look.", "tool_calls": [PARIS]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "{\"temperature\": 18}"},
        {"role": "assistant", "content": "18 degrees and sunny."}, {"role": "user", "content": "Thanks!"}],
}


def transformers_convention(messages: list[dict]) -> list[dict]:
    """The conversation as transformers' documentation writes it: arguments as objects, no null content."""
    out = copy.deepcopy(messages)
    for message in out:
        if message.get("content") is None:
            message["content"] = ""
        for c in message.get("tool_calls", []):
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    return out


def ours(tokenizer: Tokenizer, messages: list[dict], tools: list[dict] | None, **extra) -> str:
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": messages, "tools": tools, **extra})
    return chat_text(tokenizer, body, tool_plan(tokenizer, body))


@pytest.fixture(scope="module")
def template_dirs(tmp_path_factory):
    return tokenizer_dirs_with_templates(tmp_path_factory.mktemp("tokenizer"), TOOL_TEMPLATES)


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=list(CONVERSATIONS))
@pytest.mark.parametrize("family", TOOL_TEMPLATES)
def test_tool_conversations_render_as_transformers(template_dirs, family, conversation):
    messages = CONVERSATIONS[conversation]
    theirs = AutoTokenizer.from_pretrained(template_dirs[family])
    tokenizer = Tokenizer.from_dir(template_dirs[family])
    if family == "llama3.1" and conversation == "parallel calls":   # its template takes one call per turn
        with pytest.raises(APIError, match="one tool call at a time"):
            ours(tokenizer, messages, TOOLS)
        return
    expected = theirs.apply_chat_template(transformers_convention(messages), tools=TOOLS,
                                          add_generation_prompt=True, tokenize=False)
    assert ours(tokenizer, messages, TOOLS) == expected
    assert "get_weather" in expected and "e.g. Paris" in expected   # the tools are in the prompt
    if conversation != "first turn":
        assert "18 degrees" in expected


@pytest.mark.parametrize("family", TOOL_TEMPLATES)
def test_a_past_tool_conversation_renders_without_tools_offered(template_dirs, family):
    messages = CONVERSATIONS["call and result"]
    theirs = AutoTokenizer.from_pretrained(template_dirs[family])
    expected = theirs.apply_chat_template(transformers_convention(messages), add_generation_prompt=True,
                                          tokenize=False)
    assert ours(Tokenizer.from_dir(template_dirs[family]), messages, None) == expected
    assert "e.g. Paris" not in expected


def test_tool_choice_none_keeps_the_tools_in_the_prompt(template_dirs):
    tokenizer = Tokenizer.from_dir(template_dirs["qwen2.5"])
    messages = CONVERSATIONS["first turn"]
    assert ours(tokenizer, messages, TOOLS, tool_choice="none") == ours(tokenizer, messages, TOOLS)


def test_families_are_read_from_the_templates(template_dirs):
    expected = {"qwen2.5": HERMES, "qwen3": HERMES, "llama3.1": LLAMA3_JSON, "llama3.2": LLAMA3_JSON,
                "mistral": MISTRAL}
    assert {name: family_for(t) for name, t in TOOL_TEMPLATES.items()} == expected
    embedded = Tokenizer.from_dir(resolve_model("smollm2:135m"))
    assert family_for(embedded.template_text()) is SMOLLM2
    assert family_for("{% for t in tools %}<function={{ t.function.name }}>{% endfor %}") is None


def test_a_template_with_an_unknown_markup_serves_tool_choice_none_only(template_dirs, tmp_path):
    out = shutil.copytree(template_dirs["qwen2.5"], tmp_path / "unknown")
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = TOOL_TEMPLATES["qwen2.5"].replace("tool_call>", "function_call>")
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer.from_dir(out)
    with pytest.raises(APIError, match="markup localllm does not read") as refused:
        ours(tokenizer, CONVERSATIONS["first turn"], TOOLS)
    assert refused.value.status == 400 and refused.value.param == "tools"
    assert "get_weather" in ours(tokenizer, CONVERSATIONS["first turn"], TOOLS, tool_choice="none")


def test_the_embedded_model_gets_the_tools_and_past_calls_in_its_own_markup():
    model_dir = resolve_model("smollm2:135m")
    tokenizer, theirs = Tokenizer.from_dir(model_dir), AutoTokenizer.from_pretrained(model_dir)
    messages = CONVERSATIONS["text, call, answer, next question"]
    text = ours(tokenizer, messages, TOOLS)
    functions = json.dumps([{k: v for k, v in t["function"].items()} for t in TOOLS], ensure_ascii=False)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n") and f"<tools>{functions}</tools>" in system
    assert ('<|im_start|>assistant\nLet me look.\n<tool_call>[{"name": "get_weather", "arguments": '
            '{"city": "Paris", "unit": "celsius", "when": {"day": 0}}}]</tool_call><|im_end|>') in text
    assert '<|im_start|>user\n<tool_response>\n{"temperature": 18}\n</tool_response><|im_end|>' in text
    # the rewritten conversation is rendered as transformers renders it
    from localllm.tool_calling.prompted import prompted_conversation
    rewritten = prompted_conversation(transformers_convention(messages), [t["function"] for t in TOOLS])
    assert text == theirs.apply_chat_template(rewritten, add_generation_prompt=True, tokenize=False)
