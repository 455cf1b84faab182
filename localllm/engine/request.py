"""A sequence being generated or pooled: its tokens, its place in the KV cache and how far it has been computed."""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localllm.pooling_params import PoolingParams
from localllm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from concurrent.futures import Future

    import llguidance
    import torch

    from localllm.engine.events import SampledToken


@dataclass
class SequenceSpeculation:
    """One sequence's adaptive state for speculative decoding (engine/speculation.py's Speculator keeps it)."""
    num_tokens: int                 # K for its next proposal
    acceptance: float               # running average of accepted / proposed
    next_cooling: int               # length of its next cooling period, in plain steps
    steps: int = 0                  # verifying steps since speculation (re)started
    unmatched: int = 0              # steps in a row without a draft
    cooling: int = 0                # plain steps left before it speculates again
    source: int | None = None       # where in its tokens the next proposal would continue an earlier copy


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_seq_ids = itertools.count()


class Sequence:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | PoolingParams,
                 index: int = 0):
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.index = index                      # which of the request's n completions
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0            # tokens whose K/V are in the cache
        self.num_cached_tokens = 0              # of those, how many came from the prefix cache
        self.num_hashed_blocks = 0              # leading blocks already registered in the prefix cache
        self.finish_reason: str | None = None
        self.generator: torch.Generator | None = None   # set by the core, on the device that samples
        # A guided request's grammar state, set by the core (a Future while it compiles); it has consumed every
        # output token read back so far. Preemption keeps the tokens (recomputing only their KV), so the state stays
        # valid through it.
        self.matcher: llguidance.LLMatcher | Future[llguidance.LLMatcher] | None = None
        # Tokens sampled by steps still in flight, not yet read back; the next step takes its input on the device
        # from row pending_index of the latest such step's sampled tokens.
        self.num_pending = 0
        self.pending_index = 0
        # Speculative decoding: the tokens proposed to follow this sequence's last one, which the next step verifies
        # (the scheduler may keep fewer), and the proposer's adaptive state (None until it first looks).
        self.draft_token_ids: list[int] = []
        self.speculation: SequenceSpeculation | None = None
        # A pooling sequence computes its prompt only. Pooling over every token (mean, cls) needs each token's
        # hidden state, so such a sequence may not skip a cached prefix; `pooled` carries its partial result
        # (a running sum, or the first token's state) from one prefill chunk to the next.
        self.shares_cached_prefix = True
        self.pooled: torch.Tensor | None = None
        # Prompt logprobs (a request that asks for them, each of its completions): each prompt token's logprob from
        # the logits of the token before it, so every prompt token is computed (no cached prefix). scored_through:
        # the prompt positions whose rows a step was given to score (a recomputed chunk does not score them again).
        self.scores_prompt = getattr(params, "prompt_logprobs", None) is not None
        self.prompt_logprobs: list[SampledToken] = []
        self.scored_through = 0
        if self.scores_prompt:
            self.shares_cached_prefix = False

    def take_prompt_logprobs(self) -> list[SampledToken] | None:
        """The prompt logprobs, once: for the event of the first token (every prompt row is scored by then)."""
        if not self.scores_prompt or self.num_output_tokens != 1:
            return None
        return self.prompt_logprobs

    @property
    def pools(self) -> bool:
        return isinstance(self.params, PoolingParams)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        """Tokens including one still in flight: what the scheduler plans with."""
        return len(self.token_ids) + self.num_pending

    def has_all_tokens(self, max_model_len: int) -> bool:
        """Whether the token in flight is the last one (max_tokens or a full context), so no step is due."""
        return self._at_length_limit(self.num_tokens, max_model_len)

    def reached_length_limit(self, max_model_len: int) -> bool:
        """Whether the tokens read back so far already fill max_tokens or the context."""
        return self._at_length_limit(len(self.token_ids), max_model_len)

    def _at_length_limit(self, num_tokens: int, max_model_len: int) -> bool:
        if self.pools:   # it never grows: it is done when its prompt is computed
            return False
        limit = self.params.max_tokens
        return num_tokens >= max_model_len or (limit is not None and num_tokens - self.num_prompt_tokens >= limit)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def block_token_ids(self, block_index: int, block_size: int) -> list[int]:
        return self.token_ids[block_index * block_size:(block_index + 1) * block_size]
