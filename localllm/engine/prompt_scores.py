"""Prompt logprobs (SamplingParams.prompt_logprobs): each prompt token's logprob under the logits of the token before
it, from the rows a step marks as scored (batch.py's ScoredRows), appended to their sequences' prompt_logprobs. The
values are the model's own (no penalties or bias): the log-softmax of the logits, as output logprobs are."""
from __future__ import annotations

import torch

from localllm.engine.batch import ScoredRows, StepBatch
from localllm.engine.events import SampledToken
from localllm.kernels.sample_ref import preferences


def score_prompts(runner, hidden: torch.Tensor, batch: StepBatch, scored: list[ScoredRows]) -> None:
    """Rank 0's part of a step with scored rows (the other ranks take theirs in ModelRunner.forward). Reading the
    values back waits for the step: only steps that score a prompt pay that."""
    if not scored:
        return
    targets = [token for rows in scored for token in rows.targets]
    owners = [rows.seq for rows in scored for _ in rows.targets]
    top_k = max(rows.seq.params.prompt_logprobs for rows in scored)
    done = 0
    for logits in runner.scored_logits(hidden, batch):
        here = targets[done:done + logits.shape[0]]
        chosen, top_values, top_ids = _target_and_top(logits, torch.tensor(here, device=logits.device), top_k)
        for j, token in enumerate(here):
            seq = owners[done + j]
            k = seq.params.prompt_logprobs
            seq.prompt_logprobs.append(SampledToken(token, chosen[j], list(zip(top_ids[j][:k], top_values[j][:k]))))
        done += len(here)


def _target_and_top(logits: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[list, list, list]:
    """Each row's logprob of its target and its top k (values, ids), as lists: log-softmax's values, read off the
    logits and their log-sum-exp (two passes over the rows, where log-softmax writes them all out again)."""
    logits = preferences(logits)   # NaN never wins; +inf is the largest float
    norm = torch.logsumexp(logits, -1, keepdim=True)
    # a row with no finite logit: every logprob -inf, as the sampler's output logprobs have it, not NaN
    norm = torch.where(torch.isfinite(norm), norm, torch.inf)
    chosen = (logits.gather(1, targets[:, None]) - norm).squeeze(1)
    # the best alone (lm-evaluation-harness asks for one) by max: torch's topk over a 128k-wide row costs ~3 ms a
    # 1,024-token prompt more on an H200
    top_values, top_ids = logits.max(-1, keepdim=True) if k <= 1 else logits.topk(k, -1)
    return chosen.tolist(), (top_values - norm).tolist(), top_ids.tolist()
