"""Speculative decoding's verifying side: from the logits of a step in which some sequences carried draft tokens,
the tokens every sequence keeps.

A sequence that verified k drafts has k + 1 rows of logits: row j is the target's distribution for the token after
its last token and drafts 0..j-1, penalised and masked as the sampler would with that history. Greedy: the drafts
that equal the target's argmax are kept up to the first that does not, then the argmax there (or after the last
draft when all were kept) -- exactly the tokens decoding one at a time gives. Sampling: draft j is kept with
probability p_j(draft) (the drafts are a point mass, q = 1), and at the first rejection the token is drawn from p_j
with the draft removed and renormalised (max(0, p - q)); with all kept, the last row samples p_k. The output then
follows the target distribution exactly (temperature, top-k, top-p and min-p as target_probabilities gives it).
Sequences without drafts sample as they would without speculation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from localllm.engine.events import SampledToken
from localllm.engine.request import Sequence
from localllm.engine.sampler import (Sampler, SamplingRow, greedy_tokens, inverse_cdf, sampled_tokens,
                                     target_probabilities, uniforms_of)


def sampling_row(seq: Sequence, drafts: list[int] = ()) -> SamplingRow:
    """What the sampler needs of a sequence whose history is its tokens followed by `drafts`."""
    p = seq.params
    # copying a long sequence's history every step costs; only penalties and min_tokens look at it
    if Sampler.reads_history(p):
        return SamplingRow(p, seq.prompt_token_ids, seq.output_token_ids + list(drafts), seq.generator)
    return SamplingRow(p, [], [], seq.generator)


@dataclass(frozen=True)
class Verified:
    """One sequence's result: the tokens it keeps (its accepted drafts, then the target's own token)."""
    tokens: list[SampledToken]
    num_drafts: int

    @property
    def num_accepted(self) -> int:
        return len(self.tokens) - 1


class Verifier:
    def __init__(self, sampler: Sampler, forced_acceptance: float | None = None):
        """forced_acceptance: benchmarks on random weights only, where nothing would be accepted: each draft is
        kept with this probability instead of by the rule above (the output is then no longer the model's)."""
        self.sampler = sampler
        self.forced_acceptance = forced_acceptance

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence], num_drafts: list[int]) -> list[Verified]:
        """logits: [sum(k + 1), V], the rows of each sequence in order; num_drafts: each sequence's k."""
        if not any(num_drafts):   # the usual step: no rows to pick out
            return [Verified([token], 0) for token in self.sampler(logits, [sampling_row(s) for s in seqs])]
        starts = [0]
        for k in num_drafts:
            starts.append(starts[-1] + k + 1)
        results: list[Verified | None] = [None] * len(seqs)
        plain = [i for i, k in enumerate(num_drafts) if k == 0]
        if plain:
            tokens = self.sampler(logits[[starts[i] for i in plain]], [sampling_row(seqs[i]) for i in plain])
            for i, token in zip(plain, tokens):
                results[i] = Verified([token], 0)
        drafting = [i for i, k in enumerate(num_drafts) if k]
        if drafting:
            rows = [starts[i] + j for i in drafting for j in range(num_drafts[i] + 1)]
            kept = self._verify(logits[rows], [seqs[i] for i in drafting], [num_drafts[i] for i in drafting])
            for i, result in zip(drafting, kept):
                results[i] = result
        return results

    def _verify(self, logits: torch.Tensor, seqs: list[Sequence], num_drafts: list[int]) -> list[Verified]:
        drafts = [seq.draft_token_ids[:k] for seq, k in zip(seqs, num_drafts)]
        rows = [sampling_row(seq, d[:j]) for seq, d in zip(seqs, drafts) for j in range(len(d) + 1)]
        # the token each row proposes (after the last draft: none, -1)
        proposed = torch.tensor([t for d in drafts for t in d + [-1]], device=logits.device)
        logits = self.sampler.penalised_and_masked(logits, rows)
        accepted, replacement = self._decide(logits, rows, proposed)
        chosen = torch.where(accepted, proposed, replacement)
        described = sampled_tokens(logits, rows, chosen)
        accepted_host = accepted.tolist()
        results, start = [], 0
        for d in drafts:
            k = len(d)
            m = next((j for j in range(k) if not accepted_host[start + j]), k)
            results.append(Verified(described[start:start + m + 1], k))
            start += k + 1
        return results

    def _decide(self, logits: torch.Tensor, rows: list[SamplingRow], proposed: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: whether its draft is kept, and the token the row gives if it is not (or has no draft)."""
        has_draft = proposed >= 0
        draft = proposed.clamp(min=0)[:, None]
        accepted = torch.zeros_like(has_draft)
        replacement = torch.empty_like(proposed)
        greedy = [i for i, row in enumerate(rows) if row.params.greedy]
        sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
        if greedy:
            best = greedy_tokens(logits[greedy])
            replacement[greedy] = best
            accepted[greedy] = best == proposed[greedy]
        if sampled:
            sampled_rows = [rows[i] for i in sampled]
            probs = target_probabilities(logits[sampled], sampled_rows)
            keep_draft = uniforms_of(sampled_rows, logits.device) < probs.gather(1, draft[sampled]).squeeze(1)
            accepted[sampled] = keep_draft & has_draft[sampled]
            # at a rejection the draft is impossible: p with it removed, renormalised by inverse_cdf
            residual = probs.scatter(1, draft[sampled], 0.0)
            # a row without a draft, or whose draft held all the mass (rejected only by rounding), samples p itself
            no_residual = ~has_draft[sampled, None] | (residual.sum(-1, keepdim=True) == 0)
            residual = torch.where(no_residual, probs, residual)
            replacement[sampled] = inverse_cdf(residual, uniforms_of(sampled_rows, logits.device))
        if self.forced_acceptance is not None:
            forced = torch.rand(len(rows), device=logits.device) < self.forced_acceptance
            accepted = forced & has_draft
        return accepted & has_draft, replacement
