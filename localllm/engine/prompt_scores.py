"""Prompt logprobs (SamplingParams.prompt_logprobs): each prompt token's logprob under the logits of the token before
it, from the rows a step marks as scored (batch.py's ScoredRows), appended to their sequences' prompt_logprobs. The
values are the model's own (no penalties or bias), computed as the sampler computes output logprobs."""
from __future__ import annotations

import torch

from localllm.engine.batch import ScoredRows, StepBatch
from localllm.engine.events import SampledToken
from localllm.engine.sampler import model_logprobs


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
        logprobs = model_logprobs(logits)
        here = targets[done:done + logits.shape[0]]
        chosen = logprobs.gather(1, torch.tensor(here, device=logprobs.device)[:, None]).squeeze(1).tolist()
        top_values, top_ids = (t.tolist() for t in logprobs.topk(top_k, -1))
        for j, token in enumerate(here):
            seq = owners[done + j]
            k = seq.params.prompt_logprobs
            seq.prompt_logprobs.append(SampledToken(token, chosen[j], list(zip(top_ids[j][:k], top_values[j][:k]))))
        done += len(here)
