"""Reads tool calls out of a model's output as it arrives, for any family's markup.

The output is split into content text and calls. Markup that does not hold valid calls to offered functions stays
in the content as it was written. Whitespace between the content and a call is dropped, as is whitespace at the
end of an answer that made calls. Every decision waits until the text decides it, so feeding the output whole or
in any pieces gives the same content and the same calls: the streamed answer is the non-streamed one, cut up.
Text that may be the start of a marker is held back until it is known not to be one, so that markup never leaks
into streamed content."""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from localllm.tool_calling.families import ToolFamily

_WHITESPACE = " \t\r\n"
# The first characters of a JSON value that can only be calls: an object with a key, or a list of objects.
_CALLS_START = re.compile(r"\{\s*(\"|\}|$)|\[\s*(\{|\]|$)")


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str   # a JSON object, as OpenAI sends it

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}



class ToolCallParser:
    def __init__(self, family: ToolFamily, tool_names: Iterable[str], parallel: bool = True,
                 new_call_id: Callable[[], str] | None = None):
        self.family = family
        self.tool_names = frozenset(tool_names)
        self.parallel = parallel
        self.new_call_id = new_call_id or family.new_call_id
        self.calls: list[ToolCall] = []
        self._buffer = ""          # text not decided yet
        self._in_call = False      # the buffer starts inside call markup
        self._marker = ""          # the marker that opened the current call ("" for an unmarked one)
        self._dropped = ""         # whitespace dropped before the current call, restored if it is not one
        self._bare_ok = True       # an unmarked call may start here (the start, or just after an unmarked call)
        self._after_call = False   # whitespace here follows a call and is dropped

    def feed(self, text: str) -> list[str | ToolCall]:
        """The content strings and ToolCalls that `text` decides, in order."""
        self._buffer += text
        return self._advance(final=False)

    def finish(self) -> list[str | ToolCall]:
        """What is left once the output has ended: held-back text, or a last call without its closing marker."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> list[str | ToolCall]:
        out: list[str | ToolCall] = []
        while self._call_step(out, final) if self._in_call else self._text_step(out, final):
            pass
        return out

    # --- outside calls ------------------------------------------------------------------------------------
    def _text_step(self, out: list, final: bool) -> bool:
        buf = self._buffer
        if self._bare_ok and self.family.bare_start:
            start = _skip(buf, _WHITESPACE + (self.family.separators if self.calls else ""))
            if start == len(buf) and not final:
                return False   # only whitespace so far: a call may still open
            if start < len(buf) and buf[start] in self.family.bare_start:
                self._open_call("", buf[:start], buf[start:])
                return True
            if start == len(buf) and self.calls:
                self._buffer = ""   # separators after the last call
                return False
            self._bare_ok = False
        if self._after_call:
            buf = self._buffer = buf[_skip(buf, _WHITESPACE):]
        position, marker = _first_marker(buf, self.family.open_markers)
        if marker:
            before = buf[:position]
            text = before.rstrip(_WHITESPACE)
            self._emit_text(out, text)
            self._open_call(marker, before[len(text):], buf[position + len(marker):])
            return True
        end = len(buf) if final else len(buf) - _partial_marker_length(buf, self.family.open_markers)
        text = buf[:end]
        if not final or self.calls:
            text = text.rstrip(_WHITESPACE)   # held: it is dropped if a call follows
        self._emit_text(out, text)
        self._buffer = "" if final else buf[len(text):]
        return False

    def _emit_text(self, out: list, text: str) -> None:
        if text:
            out.append(text)
            self._after_call = self._bare_ok = False

    def _open_call(self, marker: str, dropped: str, rest: str) -> None:
        self._in_call, self._marker, self._dropped, self._buffer = True, marker, dropped, rest
        self._bare_ok = False

    # --- inside a call ------------------------------------------------------------------------------------
    def _call_step(self, out: list, final: bool) -> bool:
        buf = self._buffer
        start = _skip(buf, _WHITESPACE)
        if start == len(buf) or buf[start] not in "{[":
            return self._not_a_call(out) if final or start < len(buf) else False
        close = self.family.close_marker
        if close:
            position = buf.find(close, start)
            if position < 0 and not final:
                return False
            payload = buf[start:] if position < 0 else buf[start:position]
            consumed = len(buf) if position < 0 else position + len(close)
        else:
            if not _CALLS_START.match(buf, start):
                return self._not_a_call(out)
            end = _json_value_end(buf, start)
            if end is None and not final:
                return False
            if end is None or end < 0:
                return self._not_a_call(out)
            payload, consumed = buf[start:end], end
        calls = self._read_calls(payload)
        if calls is None:
            return self._not_a_call(out)
        for name, arguments in calls:
            if self.parallel or not self.calls:
                call = ToolCall(self.new_call_id(), name, arguments)
                self.calls.append(call)
                out.append(call)
        self._buffer = buf[consumed:]
        self._in_call, self._after_call, self._bare_ok = False, True, close is None
        return True

    def _not_a_call(self, out: list) -> bool:
        """Malformed markup: its text is content after all, read again as text past the marker."""
        self._in_call = False
        self._after_call = False
        if self._dropped or self._marker:
            out.append(self._dropped + self._marker)
        return True

    def _read_calls(self, payload: str) -> list[tuple[str, str]] | None:
        """(name, arguments JSON) of each call the payload holds, or None unless all are valid calls to offered
        functions."""
        try:
            value = json.loads(payload)
        except ValueError:
            return None
        calls = []
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict) or item.get("name") not in self.tool_names:
                return None
            arguments = item.get("arguments", item.get("parameters", {}))
            if isinstance(arguments, str):   # some models write the arguments as a JSON string
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    return None
            if not isinstance(arguments, dict):
                return None
            calls.append((item["name"], json.dumps(arguments, ensure_ascii=False)))
        return calls


def _skip(text: str, chars: str, start: int = 0) -> int:
    while start < len(text) and text[start] in chars:
        start += 1
    return start


def _first_marker(text: str, markers: tuple[str, ...]) -> tuple[int, str]:
    found = [(text.find(m), m) for m in markers if m in text]
    return min(found) if found else (-1, "")


def _partial_marker_length(text: str, markers: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that is the start of a marker (and must wait for more text)."""
    return max((n for m in markers for n in range(1, len(m)) if text.endswith(m[:n])), default=0)


def _json_value_end(text: str, start: int) -> int | None:
    """Where the JSON object or list opening at `start` ends; None if it has not ended yet, -1 if its brackets
    do not match."""
    closers, in_string, escaped = [], False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "{[":
            closers.append("}" if c == "{" else "]")
        elif c in "}]":
            if c != closers.pop():
                return -1
            if not closers:
                return i + 1
    return None
