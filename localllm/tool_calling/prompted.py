"""Tool conversations for chat templates that ignore tools, such as SmolLM2's: the tools are listed in a system
message in the markup SmolLM2 learned, past calls are written into the assistant's text in that markup, and tool
results go back as user turns, which any template renders (even one that insists on alternating roles)."""
from __future__ import annotations

import json

TOOLS_PROMPT = """You can call functions. They are listed in JSON within <tools></tools>:
<tools>{tools}</tools>
To call one or more of them, answer with nothing but
<tool_call>[{{"name": "function_name", "arguments": {{"argument": "value"}}}}]</tool_call>
Otherwise, answer in plain text."""


def calls_markup(tool_calls: list[dict]) -> str:
    calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in tool_calls]
    return f"<tool_call>{json.dumps(calls, ensure_ascii=False)}</tool_call>"


def prompted_conversation(messages: list[dict], functions: list[dict]) -> list[dict]:
    """`messages` as the template takes them (tool call arguments decoded); `functions` the offered function
    definitions, none for a conversation that only carries past calls."""
    out: list[dict] = []
    for i, message in enumerate(messages):
        content = message.get("content") or ""
        if message["role"] == "assistant" and message.get("tool_calls"):
            markup = calls_markup(message["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{markup}" if content else markup})
        elif message["role"] == "tool":
            result = f"<tool_response>\n{content}\n</tool_response>"
            if i and messages[i - 1]["role"] == "tool":   # the results of one turn's calls, together
                out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n{result}"}
            else:
                out.append({"role": "user", "content": result})
        else:
            out.append({"role": message["role"], "content": content})
    if functions:
        prompt = TOOLS_PROMPT.format(tools=json.dumps(functions, ensure_ascii=False))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out
