"""Turns generated token ids into text as they arrive, holding back what is not final yet."""
from __future__ import annotations

# What a decode shows for a UTF-8 sequence whose last bytes are still in tokens to come.
_INCOMPLETE_CHARACTER = "\ufffd"


class IncrementalDetokenizer:
    """Streams one sequence's output text; the pieces add up to the full decode, cut before the
    first stop string."""

    def __init__(self, tokenizer, skip_special_tokens: bool, stop: list[str]):
        self._decoder = _IncrementalDecoder(tokenizer, skip_special_tokens)
        self._stop_strings = _StopStringMatcher(stop)
        self._text = ""
        self._stopped = False

    def append(self, token_id: int) -> tuple[str, bool]:
        """Adds one generated token; returns (text now safe to show, stopped_by_stop_string)."""
        if self._stopped:
            raise RuntimeError("the output already ended at a stop string")
        safe, self._stopped = self._stop_strings.feed(self._decoder.append(token_id))
        self._text += safe
        return safe, self._stopped

    def flush(self) -> str:
        """At a finish for any other reason: the held-back text, which is now final."""
        if self._stopped:
            return ""
        safe, self._stopped = self._stop_strings.feed(self._decoder.flush())
        if not self._stopped:
            safe += self._stop_strings.release()
        self._text += safe
        return safe

    @property
    def text(self) -> str:
        """All output text emitted so far."""
        return self._text


class _IncrementalDecoder:
    """Decodes a growing list of ids a few tokens at a time.

    A token decoded on its own can be wrong twice over: a character split over tokens shows as
    U+FFFD until its last byte arrives, and tokenizers that mark word starts (SentencePiece "▁")
    drop the leading space of whatever comes first in a decode. So each step decodes a window that
    begins with the tokens emitted last time and emits only what it adds beyond their text; text
    ending in U+FFFD waits for the next token.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._window_start = 0   # first id of the window; ids before it never affect new text
        self._unemitted_start = 0  # first id whose text has not been emitted
        self._emitted_window_text = ""  # the text of ids[window_start:unemitted_start]

    def append(self, token_id: int) -> str:
        self._ids.append(token_id)
        window_text = self._decode(self._ids[self._window_start:])
        # No growth means the new token decodes to nothing (a skipped special token): the window
        # must keep the last real text so the next word's leading space survives.
        if len(window_text) <= len(self._emitted_window_text) or window_text.endswith(_INCOMPLETE_CHARACTER):
            return ""
        return self._emit(window_text)

    def flush(self) -> str:
        """Whatever is still held back, U+FFFD included: no more bytes will come to complete it."""
        if self._unemitted_start == len(self._ids):
            return ""
        return self._emit(self._decode(self._ids[self._window_start:]))

    def _emit(self, window_text: str) -> str:
        new_text = window_text[len(self._emitted_window_text):]
        self._window_start, self._unemitted_start = self._unemitted_start, len(self._ids)
        self._emitted_window_text = self._decode(self._ids[self._window_start:self._unemitted_start])
        return new_text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)


class _StopStringMatcher:
    """Cuts streamed text before the first stop string.

    Text is released only once no stop string can start in it: whatever at the end could still be
    the beginning of one stays pending. So a stop string is always found whole inside the pending
    text, however many tokens it spans, and no part of one is ever released.
    """

    def __init__(self, stop: list[str]):
        self._stop = stop
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Adds text; returns (text safe to release, whether a stop string was found)."""
        self._pending += text
        stop_at = self._first_stop_string_start()
        if stop_at is not None:
            safe, self._pending = self._pending[:stop_at], ""
            return safe, True
        releasable = len(self._pending) - self._longest_tail_that_starts_a_stop_string()
        safe, self._pending = self._pending[:releasable], self._pending[releasable:]
        return safe, False

    def release(self) -> str:
        """The pending text, once no more text will come to complete a stop string."""
        safe, self._pending = self._pending, ""
        return safe

    def _first_stop_string_start(self) -> int | None:
        starts = [start for start in (self._pending.find(s) for s in self._stop) if start != -1]
        return min(starts, default=None)

    def _longest_tail_that_starts_a_stop_string(self) -> int:
        longest = 0
        for s in self._stop:
            for length in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:length]):
                    longest = length
                    break
        return longest
