"""What the engine core reports each step, as plain records: no torch here, so that the daemon's front end,
which receives them over the engine pipe, can read them without loading torch. They are msgspec structs
because they cross that pipe as they are (see localllm.server.protocol) and are made by the thousand per
second: a frozen struct costs less to build than a dataclass, and encodes as a bare array."""
from __future__ import annotations

import msgspec


class SampledToken(msgspec.Struct, frozen=True, array_like=True):
    token_id: int
    logprob: float | None = None                              # set when params.logprobs is not None
    top_logprobs: list[tuple[int, float]] | None = None       # the top params.logprobs (token_id, logprob), best first


class TokenEvent(msgspec.Struct, frozen=True, array_like=True):
    """What one sequence did in one step: a new token, and/or finishing."""
    request_id: str
    index: int
    sampled: SampledToken | None
    finish_reason: str | None = None


class EmbeddingEvent(msgspec.Struct, frozen=True, array_like=True):
    """A pooling request's result: its vector, pooled (and normalized, and truncated) as the model and request ask."""
    request_id: str
    embedding: list[float]
