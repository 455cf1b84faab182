"""Continuous batching: which sequences run this step, and how many of their tokens.

Every step has a token budget. Running sequences go first (a decode costs one token; a prompt being
prefilled in chunks takes what is left of it), then waiting ones join while budget, sequence slots and KV
blocks last. When blocks run out, the newest running sequence is preempted: its blocks are freed and it
goes back to the front of the queue to be recomputed later (its full blocks often come back from the
prefix cache).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from localllm.engine.block_manager import BlockManager
from localllm.engine.request import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int               # draft tokens included
    num_draft_tokens: int = 0         # a decode verifying this many of seq.draft_token_ids after its last token

    @property
    def reaches_last_token(self) -> bool:
        """Whether this step computes the sequence's last token (so far)."""
        return self.seq.num_computed_tokens + self.num_new_tokens - self.num_draft_tokens == self.seq.num_tokens

    @property
    def samples(self) -> bool:
        """Whether this step's logits give the sequence's next token (a pooling sequence never samples)."""
        return self.reaches_last_token and not self.seq.pools


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_batched_tokens: int, max_num_seqs: int,
                 enable_chunked_prefill: bool, max_model_len: int):
        self.block_manager = block_manager
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence, front: bool = False) -> None:
        if front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        scheduled: list[ScheduledSeq] = []
        num_preempted = 0
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.has_all_tokens(self.max_model_len):   # its last token is in flight; it finishes when read back
                i += 1
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            # a decode carries its drafts as far as budget and blocks allow; they go before anyone is preempted
            drafts = min(len(seq.draft_token_ids), budget - 1) if n == 1 else 0
            if drafts and not self.block_manager.can_allocate(seq, seq.num_computed_tokens + n + drafts):
                drafts = 0
            self._cut_drafts(seq, drafts)
            while not self.block_manager.can_allocate(seq, seq.num_computed_tokens + n):
                victim = self.running.pop()
                self._preempt(victim)
                num_preempted += 1
                if victim is seq:
                    break
            else:
                self.block_manager.allocate(seq, seq.num_computed_tokens + n + drafts)
                scheduled.append(ScheduledSeq(seq, n + drafts, drafts))
                budget -= n + drafts
                i += 1
                continue
            break
        for seq in self.running[i:]:   # left out of this step by the budget
            self._cut_drafts(seq, 0)
        if num_preempted:
            return SchedulerOutput(scheduled, num_preempted)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._admit(seq, budget, scheduled):
                break
            budget -= scheduled[-1].num_new_tokens
        return SchedulerOutput(scheduled)

    def _cut_drafts(self, seq: Sequence, drafts: int) -> None:
        """Keeps the sequence's first `drafts` drafts, and releases the blocks a draft model's proposing steps took
        for the others (engine/draft_model.py)."""
        if len(seq.draft_token_ids) > drafts:
            del seq.draft_token_ids[drafts:]
            self.block_manager.trim(seq, seq.num_computed_tokens + 1 + drafts)

    def _admit(self, seq: Sequence, budget: int, scheduled: list[ScheduledSeq]) -> bool:
        manager = self.block_manager
        # forks arrive holding blocks
        prefix = [] if seq.block_table or not seq.shares_cached_prefix else manager.cached_prefix(seq)
        computed = seq.num_computed_tokens if seq.block_table else len(prefix) * manager.block_size
        n = seq.num_tokens - computed
        if n > budget:
            if not self.enable_chunked_prefill:
                return False
            n = budget
        needed = -(-(computed + n) // manager.block_size) - (len(seq.block_table) or len(prefix))
        if needed > manager.free_blocks_after_taking(prefix):
            return False
        if not seq.block_table:
            manager.take_prefix(seq, prefix)
        manager.allocate(seq, computed + n)
        self.waiting.popleft()
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        scheduled.append(ScheduledSeq(seq, n))
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free_sequence(seq)
        seq.draft_token_ids = []
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def step_done(self, out: SchedulerOutput) -> None:
        """The runner computed the scheduled tokens: advance each sequence and share its newly full blocks."""
        for item in out.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.cache_full_blocks(item.seq)

    def keep_verified(self, seq: Sequence, num_accepted: int) -> None:
        """After a step verified drafts: the sequence's computed tokens are its last one plus the accepted drafts, and
        it keeps exactly the blocks those need (the rejected drafts' slots are released or overwritten later)."""
        seq.num_computed_tokens -= len(seq.draft_token_ids) - num_accepted
        seq.draft_token_ids = []
        self.block_manager.trim(seq, seq.num_computed_tokens)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free_sequence(seq)
