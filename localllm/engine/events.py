"""What the engine core reports each step, as plain records: no torch here, so that the daemon's front end,
which receives them over the engine pipe, can read them without loading torch. They are msgspec structs
because they cross that pipe as they are (see localllm.server.protocol) and are made by the thousand per
second: a frozen struct costs less to build than a dataclass, and encodes as a bare array."""
from __future__ import annotations

from dataclasses import dataclass

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
    # with the first token of a request that asks for prompt_logprobs: one entry per prompt token after the first
    prompt_logprobs: list[SampledToken] | None = None


class EmbeddingEvent(msgspec.Struct, frozen=True, array_like=True):
    """A pooling request's result: its vector, pooled (and normalized, and truncated) as the model and request ask."""
    request_id: str
    embedding: list[float]


@dataclass
class SpeculationStats:
    """Speculative decoding's counters since the engine started (EngineStats carries them to the front end)."""
    proposed: int = 0         # draft tokens verified
    accepted: int = 0         # of those, accepted
    verify_steps: int = 0     # sequence-steps that verified drafts

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a verifying sequence gets per step: the accepted drafts plus the target's own token."""
        return (self.accepted + self.verify_steps) / self.verify_steps if self.verify_steps else 0.0
