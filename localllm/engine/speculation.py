"""Speculative decoding's proposing side: which decoding sequences get draft tokens this step, and how many.

The drafts come from the n-gram lookup below, or from a draft model (draft_model.py) given the same adaptive K.

The n-gram proposer looks up the sequence's last n tokens (n = 3, 2, 1) in its own prompt and output and proposes
the tokens that followed their latest earlier occurrence: free where the answer copies its context (code edits,
quoted turns). When no suffix matches, it goes on copying from where its last proposal came from, one token past
the rejected one (an edit that substitutes a token and carries on).

Each sequence adapts: K grows by one after a step that accepted every proposal and falls to one more than what was
accepted otherwise; a sequence whose proposals keep failing (or that finds none for a while) stops speculating for
a cooling period that doubles each time, so where nothing is accepted only a few steps in hundreds pay for verification.
With more running sequences than `speculative_batch_limit`, decoding is compute-bound and nobody speculates.
"""
from __future__ import annotations

import numpy as np

from localllm.engine.draft_model import DraftProposer
from localllm.engine.events import SpeculationStats
from localllm.engine.request import Sequence, SequenceSpeculation

LONGEST_NGRAM = 3
# acceptance (accepted / proposed) averaged with this weight for the newest verifying step
ACCEPTANCE_WEIGHT = 0.3
# a sequence that finds no draft this many steps in a row cools too (looking is free, but it keeps its steps off the
# overlapped path)
UNMATCHED_STEPS = 8
# below this average acceptance, after WARM_UP_STEPS steps, a sequence stops speculating for a while
OFF_BELOW = 0.15
WARM_UP_STEPS = 4
FIRST_COOLING_STEPS, LAST_COOLING_STEPS = 16, 512
# where a sequence starts, and comes back from cooling: 4 failures in a row turn it off
STARTING_ACCEPTANCE = 0.5


def ngram_match(tokens: np.ndarray) -> int | None:
    """Where the tokens following the latest earlier occurrence of the sequence's last n tokens start (n from
    LONGEST_NGRAM down to 1), None when even the last token never occurred before."""
    length = len(tokens)
    for n in range(min(LONGEST_NGRAM, length - 1), 0, -1):
        # windows starting at 0 .. length - n - 1: each is followed by at least one token
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if len(hits):
            return int(hits[-1]) + n
    return None


class Speculator:
    """Sets each running sequence's draft_token_ids before the scheduler runs, and learns from the verification."""

    def __init__(self, num_tokens: int, batch_limit: int, max_model_len: int, copy_from_start: bool = False,
                 draft: DraftProposer | None = None):
        """copy_from_start: a sequence with no match copies its prompt from the start (forced-acceptance
        benchmarks on random weights, whose outputs never match their prompts). draft: the draft model that
        proposes instead of the n-gram lookup."""
        self.draft = draft
        self.num_tokens = num_tokens
        self.batch_limit = batch_limit
        self.max_model_len = max_model_len
        self.copy_from_start = copy_from_start
        self.stats = SpeculationStats()

    def state(self, seq: Sequence) -> SequenceSpeculation | None:
        """The sequence's state, made on first use; None for a sequence that never speculates: a pooling one, and a
        guided one (its grammar would have to check every draft token)."""
        if seq.pools or seq.matcher is not None:
            return None
        if seq.speculation is None:
            seq.speculation = SequenceSpeculation(self.num_tokens, STARTING_ACCEPTANCE, FIRST_COOLING_STEPS,
                                                  source=0 if self.copy_from_start else None)
        return seq.speculation

    def wants_tokens_on_host(self, seq: Sequence, num_running: int) -> bool:
        """Whether the sequence may propose next step, which needs this step's token read back at once."""
        state = self.state(seq)
        return state is not None and state.cooling == 0 and num_running <= self.batch_limit

    def propose(self, running: list[Sequence]) -> None:
        on = len(running) <= self.batch_limit
        wanted = []
        for seq in running:
            seq.draft_token_ids = []
            k = self._wanted(seq) if on else 0
            if k > 0:
                wanted.append((seq, k))
        if self.draft is not None:
            proposals = self.draft.propose([seq for seq, _ in wanted], [k for _, k in wanted], len(running))
        else:
            proposals = [self._ngram(seq, k) for seq, k in wanted]
        for (seq, _), drafts in zip(wanted, proposals):
            seq.draft_token_ids = drafts

    def _wanted(self, seq: Sequence) -> int:
        """How many drafts the sequence would verify next step (0: none)."""
        state = self.state(seq)
        if state is None:
            return 0
        if state.cooling:   # counted down while its steps run overlapped, with their tokens still in flight
            state.cooling -= 1
            if state.cooling == 0:
                state.acceptance, state.steps = STARTING_ACCEPTANCE, 0
            return 0
        # only a decoding sequence whose latest token is on the host can propose
        if seq.num_pending or seq.num_computed_tokens != len(seq.token_ids) - 1:
            return 0
        return min(state.num_tokens, self._room(seq))

    def _ngram(self, seq: Sequence, k: int) -> list[int]:
        state = seq.speculation
        tokens = np.asarray(seq.token_ids)
        start = ngram_match(tokens)
        if start is None:
            start = state.source
        if start is None or start >= len(tokens):
            state.unmatched += 1
            if state.unmatched >= UNMATCHED_STEPS:
                self._cool(state)
            return []
        state.unmatched = 0
        state.source = start
        return tokens[start:start + k].tolist()

    def _room(self, seq: Sequence) -> int:
        """Drafts that fit: a step verifying k of them may produce k + 1 tokens, within max_tokens and the context."""
        room = self.max_model_len - len(seq.token_ids) - 1
        limit = seq.params.max_tokens
        if limit is not None:
            room = min(room, limit - seq.num_output_tokens - 1)
        return room

    def record(self, seq: Sequence, proposed: int, accepted: int) -> None:
        """What a step did with the sequence's `proposed` drafts."""
        state = seq.speculation
        self.stats.proposed += proposed
        self.stats.accepted += accepted
        self.stats.verify_steps += 1
        state.num_tokens = min(self.num_tokens, state.num_tokens + 1) if accepted == proposed else accepted + 1
        state.source = state.source + accepted + 1 if state.source is not None else None
        rate = accepted / proposed
        state.acceptance += ACCEPTANCE_WEIGHT * (rate - state.acceptance)
        state.steps += 1
        if rate >= STARTING_ACCEPTANCE:
            state.next_cooling = FIRST_COOLING_STEPS
        elif state.steps >= WARM_UP_STEPS and state.acceptance < OFF_BELOW:
            self._cool(state)

    def _cool(self, state: SequenceSpeculation) -> None:
        """No speculation for a while, longer each time (until a step accepts well again)."""
        state.cooling, state.unmatched = state.next_cooling, 0
        state.source = 0 if self.copy_from_start else None
        state.next_cooling = min(LAST_COOLING_STEPS, 2 * state.next_cooling)
