"""Speculative decoding keeps the target distribution when sampling: the accept / resample rule checked against
the sampler's own distribution, row by row, and through the whole engine (outputs sampled with and without
speculation follow the same distribution).

Each check is a chi-square test at significance 1e-3 on counts from fixed seeds, so the tests are deterministic; over
random seeds, each would fail with probability 1e-3 where the distributions are equal (the false-failure rate), and
this file's eight checks together with probability under 1%."""
from __future__ import annotations

import pytest
import torch

from localllm import LLM, SamplingParams
from localllm.engine.request import Sequence
from localllm.engine.sampler import Sampler, SamplingRow, target_probabilities
from localllm.engine.verification import Verifier, sampling_row
from tiny_models import build_model_dir

SIGNIFICANCE = 1e-3
VOCAB = 7


def chi_square_p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Goodness of fit of counts to expected counts (categories expected fewer than 5 times pooled into one)."""
    observed, expected = observed.double(), expected.double()
    rare = expected < 5
    if rare.any():
        observed = torch.cat([observed[~rare], observed[rare].sum(0, keepdim=True)])
        expected = torch.cat([expected[~rare], expected[rare].sum(0, keepdim=True)])
    statistic = ((observed - expected) ** 2 / expected.clamp(min=1e-12)).sum()
    dof = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), statistic / 2))


def two_sample_p_value(a: list, b: list) -> float:
    """Whether two samples of categories come from one distribution (chi-square on the 2 x k table)."""
    categories = sorted(set(a) | set(b))
    counts = torch.tensor([[x.count(c) for c in categories] for x in (a, b)], dtype=torch.float64)
    expected = counts.sum(1, keepdim=True) * counts.sum(0, keepdim=True) / counts.sum()
    keep = expected.min(0).values >= 5
    counts = torch.cat([counts[:, keep], counts[:, ~keep].sum(1, keepdim=True)], 1)
    expected = torch.cat([expected[:, keep], expected[:, ~keep].sum(1, keepdim=True)], 1)
    keep = expected[0] > 0
    counts, expected = counts[:, keep], expected[:, keep]
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = counts.shape[1] - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), statistic / 2))


PARAMS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=4),
    SamplingParams(temperature=1.3, top_p=0.8, min_p=0.05),
    SamplingParams(temperature=1.0, repetition_penalty=1.8, presence_penalty=0.5),
]


@pytest.mark.parametrize("params", PARAMS, ids=["plain", "top-k", "top-p-min-p", "penalties"])
def test_verified_tokens_follow_the_target_distribution(params):
    """One sequence's 3 rows of logits (2 drafts) verified 5,000 times: the first kept token follows p_0, the second
    (given draft 0 kept) p_1, the third (given both kept) p_2, each as the sampler defines it for that history."""
    torch.manual_seed(0)
    logits = torch.randn(3, VOCAB) * 1.5
    drafts = [2, 5]   # likely enough to be kept often, so every row is tested
    logits[0, 2] += 3.0
    logits[1, 5] += 3.0
    count = 5000
    seqs = []
    for _ in range(count):
        seq = Sequence("r", [1, 2, 3], params)
        seq.draft_token_ids = list(drafts)
        seqs.append(seq)
    sampler = Sampler(eos_token_ids=set())
    results = Verifier(sampler)(logits.repeat(count, 1), seqs, [2] * count)
    kept = [[t.token_id for t in r.tokens] for r in results]
    for j in range(3):
        history = sampling_row(seqs[0], drafts[:j])
        p = target_probabilities(sampler.penalised_and_masked(logits[j:j + 1], [history]), [history])[0]
        given = [k[j] for k in kept if k[:j] == drafts[:j] and len(k) > j]
        assert len(given) > 400
        observed = torch.bincount(torch.tensor(given), minlength=VOCAB)
        assert observed[p == 0].sum() == 0   # never a token the target cannot produce
        assert chi_square_p_value(observed[p > 0], p[p > 0] * len(given)) > SIGNIFICANCE


def test_target_probabilities_are_the_samplers_distribution():
    """The dense distribution speculative decoding verifies against is the one the sampler draws from."""
    torch.manual_seed(1)
    logits = torch.randn(VOCAB) * 2
    params = SamplingParams(temperature=0.9, top_p=0.85, min_p=0.02)
    count = 6000
    rows = [SamplingRow(params, [], [], None)] * count
    draws = Sampler.token_ids(logits.repeat(count, 1), rows)
    p = target_probabilities(logits[None], rows[:1])[0]
    observed = torch.bincount(draws, minlength=VOCAB)
    assert observed[p == 0].sum() == 0
    assert chi_square_p_value(observed[p > 0], p[p > 0] * count) > SIGNIFICANCE


@pytest.mark.parametrize("proposer", ["ngram", "draft"])
def test_sampled_outputs_follow_the_same_distribution_with_and_without_speculation(tmp_path, proposer):
    """500 seeded samples of 4 tokens after a repetitive prompt, with and without drafts (n-gram ones, or the greedy
    tokens of a draft model, here the target itself): the tokens at each position are distributed alike (two-sample
    chi-square), while drafts were kept and rejected."""
    model_dir = str(build_model_dir("qwen2", tmp_path / "qwen2"))
    prompt = [30, 31, 32, 33] * 6
    samples = 500
    params = [SamplingParams(temperature=1.0, top_k=5, max_tokens=4, ignore_eos=True, seed=i) for i in range(samples)]
    outputs = {}
    for speculative in ("off", "ngram" if proposer == "ngram" else f"draft:{model_dir}"):
        llm = LLM(model_dir, block_size=4, num_kv_blocks=1200, num_threads=1, max_num_seqs=256,
                  speculative=speculative, speculative_batch_limit=256)
        outputs[speculative] = [r.outputs[0].token_ids for r in llm.generate([prompt] * samples, params)]
    stats = llm.engine.core.speculator.stats
    assert 0 < stats.accepted < stats.proposed
    for position in (1, 2, 3):
        plain = [o[position] for o in outputs["off"]]
        speculated = [o[position] for o in outputs[speculative]]
        assert two_sample_p_value(plain, speculated) > SIGNIFICANCE
