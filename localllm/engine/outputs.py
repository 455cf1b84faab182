"""What generation hands back: whole results (LLM.generate) and per-step deltas (streaming)."""
from __future__ import annotations

from dataclasses import dataclass, field

from localllm.engine.events import SampledToken


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[SampledToken] | None = None   # one entry per generated token when logprobs were asked
    finish_reason: str | None = None              # "stop", "length" or "abort"


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    # with SamplingParams.prompt_logprobs: None for the first prompt token (nothing comes before it), then one entry
    # per prompt token
    prompt_logprobs: list[SampledToken | None] | None = None

    @property
    def finished(self) -> bool:
        return all(o.finish_reason is not None for o in self.outputs)


@dataclass(frozen=True)
class StreamDelta:
    """New text and tokens of one completion since the previous step."""
    request_id: str
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[SampledToken] | None
    finish_reason: str | None
    prompt_logprobs: list[SampledToken] | None = None   # with the first delta, when the request asks for them
