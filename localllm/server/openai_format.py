"""OpenAI response shapes: whole answers, stream chunks, usage, both logprobs formats and embedding lists."""
from __future__ import annotations

import base64
import struct
import time
import uuid
import weakref
from dataclasses import dataclass, field

from localllm.engine.events import SampledToken

LOGPROB_FLOOR = -9999.0   # JSON has no -inf; OpenAI clients expect a number


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# --- token text -------------------------------------------------------------------------------------------
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-character map, inverted: byte-level BPE tokens spell bytes with these characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_LEVEL = _byte_level_alphabet()


class TokenTexts:
    """The exact bytes of each token (for `bytes`), and their text (lossy for partial UTF-8)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.kind = type(decoder).__name__ if decoder is not None else ""
        self._cache: dict[int, bytes] = {}

    def bytes(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._bytes(token_id)
        return cached

    def text(self, token_id: int) -> str:
        return self.bytes(token_id).decode("utf-8", errors="replace")

    def _bytes(self, token_id: int) -> bytes:
        if token_id in self.special:
            return self.special[token_id].encode()
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if self.kind == "ByteLevel" and all(c in _BYTE_LEVEL for c in piece):
            return bytes(_BYTE_LEVEL[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        if "▁" in piece:
            return piece.replace("▁", " ").encode()
        return self.tokenizer.decode([token_id]).encode()


_texts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_texts(tokenizer) -> TokenTexts:
    texts = _texts.get(tokenizer)
    if texts is None:
        texts = _texts[tokenizer] = TokenTexts(tokenizer)
    return texts


def _lp(value: float | None) -> float:
    return LOGPROB_FLOOR if value is None or value != value or value < LOGPROB_FLOOR else value


def chat_logprobs(texts: TokenTexts, tokens: list[SampledToken]) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        return {"token": texts.text(token_id), "logprob": _lp(logprob), "bytes": list(texts.bytes(token_id))}
    return {"content": [{**entry(t.token_id, t.logprob),
                         "top_logprobs": [entry(i, lp) for i, lp in t.top_logprobs or []]} for t in tokens],
            "refusal": None}


def completion_logprobs(texts: TokenTexts, tokens: list[SampledToken], offset: int) -> tuple[dict, int]:
    """The legacy shape, and the text offset after these tokens (text_offset continues across chunks)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        text = texts.text(t.token_id)
        out["tokens"].append(text)
        if t.logprob is None:   # an echoed prompt's first token: nothing before it to score it
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
        else:
            out["token_logprobs"].append(_lp(t.logprob))
            out["top_logprobs"].append({texts.text(i): _lp(lp) for i, lp in t.top_logprobs or []})
        out["text_offset"].append(offset)
        offset += len(text)
    return out, offset


# --- whole answers ----------------------------------------------------------------------------------------
@dataclass
class Choice:
    text: str = ""
    num_tokens: int = 0
    logprobs: list[SampledToken] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    prompt_logprobs: list[SampledToken] | None = None   # with echo and logprobs: the prompt's, scored


def _message(choice: Choice) -> dict:
    message = {"role": "assistant", "content": choice.text, "refusal": None}
    if choice.tool_calls:
        message["content"] = choice.text or None   # as OpenAI answers a call without text
        message["tool_calls"] = choice.tool_calls
    return message


def chat_response(response_id: str, model: str, choices: list[Choice], texts: TokenTexts | None,
                  prompt_tokens: int) -> dict:
    return {
        "id": response_id, "object": "chat.completion", "created": now(), "model": model,
        "choices": [{"index": i, "message": _message(c),
                     "logprobs": chat_logprobs(texts, c.logprobs) if texts else None,
                     "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
        "usage": usage(prompt_tokens, sum(c.num_tokens for c in choices)),
        "system_fingerprint": None,
    }


def completion_response(response_id: str, model: str, choices: list[Choice], texts: TokenTexts | None,
                        prompt_tokens: int) -> dict:
    return {
        "id": response_id, "object": "text_completion", "created": now(), "model": model,
        "choices": [{"index": i, "text": c.text,
                     "logprobs": completion_logprobs(texts, c.logprobs, 0)[0] if texts else None,
                     "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
        "usage": usage(prompt_tokens, sum(c.num_tokens for c in choices)),
        "system_fingerprint": None,
    }


def embedding_list(model: str, vectors: list[list[float]], prompt_tokens: int, encoding_format: str | None) -> dict:
    """base64: each vector's float32 values, little-endian, as OpenAI sends them (its client decodes them so)."""
    def encoded(vector: list[float]):
        if encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        return vector
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


# --- stream chunks ----------------------------------------------------------------------------------------
def chat_chunk(response_id: str, created: int, model: str, choices: list[dict], with_usage: bool) -> dict:
    chunk = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": None, "choices": choices}
    if with_usage:
        chunk["usage"] = None
    return chunk


def completion_chunk(response_id: str, created: int, model: str, choices: list[dict], with_usage: bool) -> dict:
    chunk = {"id": response_id, "object": "text_completion", "created": created, "model": model,
             "system_fingerprint": None, "choices": choices}
    if with_usage:
        chunk["usage"] = None
    return chunk
