import math
from collections import Counter

import pytest
import torch

from localllm.engine import sampler as sampler_module
from localllm.engine.sampler import SampledToken, Sampler, SamplingRow
from localllm.sampling_params import SamplingParams

EOS = 4
PROBS = [0.5, 0.3, 0.15, 0.05]
LOGITS = [math.log(p) + 1.0 for p in PROBS]  # softmax(LOGITS) == PROBS; the shift must not matter


def row(params: SamplingParams, prompt=(), output=(), seed: int | None = None) -> SamplingRow:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return SamplingRow(params, list(prompt), list(output), generator)


def sample_many(logits: list[float], params: SamplingParams, draws: int = 4000) -> Counter:
    """Token counts over `draws` rows of the same logits, drawn from the (seeded) global RNG."""
    torch.manual_seed(1234)
    rows = [row(params) for _ in range(draws)]
    tokens = Sampler({EOS})(torch.tensor(logits).expand(draws, -1), rows)
    return Counter(t.token_id for t in tokens)


def kept(counts: Counter) -> set[int]:
    return set(counts)


def assert_frequencies_match(counts: Counter, expected: dict[int, float]) -> None:
    """Pearson chi-square against the expected distribution; 25 is far in the tail for <= 5 dof."""
    assert set(counts) <= set(expected)
    draws = sum(counts.values())
    total = sum(expected.values())
    chi_square = sum((counts[t] - draws * p / total) ** 2 / (draws * p / total) for t, p in expected.items())
    assert chi_square < 25, (counts, expected)


def logprobs_by_token(token: SampledToken) -> dict[int, float]:
    return dict(token.top_logprobs)


# --- greedy ---------------------------------------------------------------------------------

def test_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 0.0], [5.0, 1.0, 2.0, 3.0, 4.0]])
    rows = [row(SamplingParams(temperature=0.0)) for _ in range(2)]
    tokens = Sampler({EOS})(logits, rows)
    assert [t.token_id for t in tokens] == [1, 0]
    assert all(t.logprob is None and t.top_logprobs is None for t in tokens)


def test_greedy_and_random_rows_share_a_batch():
    logits = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, -50.0, -50.0]])
    rows = [row(SamplingParams(temperature=0.0)), row(SamplingParams(top_k=1), seed=3)]
    assert [t.token_id for t in Sampler({EOS})(logits, rows)] == [1, 2]


def test_bf16_logits_are_upcast():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.5]])
    params = SamplingParams(temperature=0.0, logprobs=2)
    from_bf16 = Sampler({EOS})(logits.bfloat16(), [row(params)])[0]
    assert from_bf16.token_id == 2
    assert from_bf16.logprob == pytest.approx(torch.log_softmax(logits, -1)[0, 2].item(), abs=1e-2)


# --- truncation: top-k, top-p, min-p ----------------------------------------------------------

def test_top_k_keeps_exactly_k_renormalised():
    counts = sample_many(LOGITS, SamplingParams(top_k=2))
    assert kept(counts) == {0, 1}
    assert_frequencies_match(counts, {0: 0.5, 1: 0.3})


def test_top_k_ties_still_keep_exactly_k():
    counts = sample_many([1.0, 1.0, 1.0, 1.0, -5.0], SamplingParams(top_k=2))
    assert len(kept(counts)) == 2


def test_top_k_larger_than_vocabulary_keeps_everything():
    counts = sample_many(LOGITS, SamplingParams(top_k=100))
    assert_frequencies_match(counts, dict(enumerate(PROBS)))


@pytest.mark.parametrize("top_p, nucleus", [(0.8, {0, 1}), (0.81, {0, 1, 2}), (0.5, {0}), (0.1, {0}), (0.96, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_top_p(top_p, nucleus):
    counts = sample_many(LOGITS, SamplingParams(top_p=top_p))
    assert kept(counts) == nucleus
    assert_frequencies_match(counts, {t: PROBS[t] for t in nucleus})


def test_top_p_reached_exactly_despite_float_rounding():
    # In float32 these two probabilities sum to just under 0.6; the nucleus must still stop there.
    logits = [math.log(p) + 1.0 for p in [0.3, 0.3, 0.2, 0.2]]
    assert kept(sample_many(logits, SamplingParams(top_p=0.6))) == {0, 1}


def test_top_p_nucleus_wider_than_the_first_window(monkeypatch):
    # The two best tokens hold 0.8 < 0.9, so the sampler must look past its first window.
    monkeypatch.setattr(sampler_module, "NUCLEUS_WINDOW", 2)
    counts = sample_many(LOGITS, SamplingParams(top_p=0.9))
    assert kept(counts) == {0, 1, 2}
    assert_frequencies_match(counts, {0: 0.5, 1: 0.3, 2: 0.15})


def test_top_p_applies_to_the_top_k_renormalised_distribution():
    # After top-k 3: [0.5, 0.3, 0.15] / 0.95 = [0.526, 0.316, 0.158]; the first two hold 0.842 >= 0.82.
    assert kept(sample_many(LOGITS, SamplingParams(top_k=3, top_p=0.82))) == {0, 1}
    # Over the full vocabulary the first two hold only 0.8 < 0.82.
    assert kept(sample_many(LOGITS, SamplingParams(top_p=0.82))) == {0, 1, 2}


def test_top_p_applies_after_temperature():
    # Temperature 0.5 squares the probabilities: [0.25, 0.09, 0.0225, 0.0025] / 0.365
    # = [0.685, 0.247, 0.062, 0.007], so the first two already hold 0.932 >= 0.9.
    counts = sample_many(LOGITS, SamplingParams(temperature=0.5, top_p=0.9))
    assert kept(counts) == {0, 1}
    assert_frequencies_match(counts, {0: 0.25, 1: 0.09})


@pytest.mark.parametrize("min_p, survivors", [(0.25, {0, 1, 2}), (0.35, {0, 1}), (0.09, {0, 1, 2, 3}), (1.0, {0})])
def test_min_p_drops_tokens_below_min_p_times_the_top_probability(min_p, survivors):
    # Thresholds: 0.25 * 0.5 = 0.125 drops 0.05; 0.35 * 0.5 = 0.175 also drops 0.15.
    counts = sample_many(LOGITS, SamplingParams(min_p=min_p))
    assert kept(counts) == survivors
    assert_frequencies_match(counts, {t: PROBS[t] for t in survivors})


def test_min_p_after_top_k():
    counts = sample_many(LOGITS + [-20.0], SamplingParams(top_k=3, min_p=0.35))
    assert kept(counts) == {0, 1}


def test_temperature_sharpens_and_flattens():
    # Temperature t turns p into p ** (1 / t), renormalised.
    assert_frequencies_match(sample_many(LOGITS, SamplingParams(temperature=2.0)),
                             {t: p ** 0.5 for t, p in enumerate(PROBS)})
    assert_frequencies_match(sample_many(LOGITS, SamplingParams(temperature=0.5)),
                             {t: p ** 2 for t, p in enumerate(PROBS)})


def test_plain_sampling_matches_the_softmax():
    assert_frequencies_match(sample_many(LOGITS, SamplingParams()), dict(enumerate(PROBS)))


# --- penalties and masks, checked through logprobs (which see the penalised logits) ------------

BASE = [2.0, -1.0, 0.5, 1.0, 0.0]


def penalised_logprobs(params: SamplingParams, prompt, output) -> dict[int, float]:
    token = Sampler({EOS})(torch.tensor([BASE]), [row(params, prompt, output)])[0]
    return logprobs_by_token(token)


def assert_logprobs_of(logprobs: dict[int, float], expected_logits: list[float]) -> None:
    expected = torch.log_softmax(torch.tensor(expected_logits), -1).tolist()
    assert logprobs == pytest.approx(dict(enumerate(expected)), abs=1e-5)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    # Seen (prompt or output): 0 (2.0 -> 1.0), 1 (-1.0 -> -2.0), 3 (1.0 -> 0.5); 2 and 4 untouched.
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0, logprobs=5)
    assert_logprobs_of(penalised_logprobs(params, prompt=[0], output=[1, 3, 3]), [1.0, -2.0, 0.5, 0.5, 0.0])


def test_presence_and_frequency_penalties_count_output_tokens_only():
    # Token 1 once: -0.5 - 0.25; token 3 twice: -0.5 - 2 * 0.25; token 0 is only in the prompt.
    params = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25, logprobs=5)
    assert_logprobs_of(penalised_logprobs(params, prompt=[0], output=[1, 3, 3]), [2.0, -1.75, 0.5, 0.0, 0.0])


def test_repetition_then_additive_penalties():
    # Token 3: 1.0 / 2 = 0.5, then -0.5 presence -1.0 frequency (count 2) = -1.0.
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0, presence_penalty=0.5,
                            frequency_penalty=0.5, logprobs=5)
    assert_logprobs_of(penalised_logprobs(params, prompt=[], output=[3, 3]), [2.0, -1.0, 0.5, -1.0, 0.0])


def test_negative_presence_penalty_encourages_repeats():
    params = SamplingParams(temperature=0.0, presence_penalty=-2.0)
    token = Sampler({EOS})(torch.tensor([BASE]), [row(params, output=[3])])[0]
    assert token.token_id == 3  # 1.0 + 2.0 beats 2.0


def test_penalties_leave_the_callers_logits_alone():
    logits = torch.tensor([BASE])
    Sampler({EOS})(logits, [row(SamplingParams(repetition_penalty=2.0, min_tokens=1), prompt=[0, 1])])
    assert logits.tolist() == [BASE]


def test_penalised_greedy_choice():
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert Sampler({EOS})(torch.tensor([[2.0, 1.5]]), [row(params, prompt=[0])])[0].token_id == 1


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    logits = torch.tensor([[0.0, 1.0, 8.0, 0.0, 9.0]])  # EOS (4) best, stop token 2 next
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2], logprobs=5)
    early = Sampler({EOS})(logits, [row(params, output=[7])])[0]
    assert early.token_id == 1
    assert logprobs_by_token(early)[EOS] == float("-inf")
    assert logprobs_by_token(early)[2] == float("-inf")
    assert Sampler({EOS})(logits, [row(params, output=[7, 7])])[0].token_id == EOS


def test_min_tokens_with_ignore_eos_leaves_eos_alone():
    # EOS does not end such a sequence, so there is nothing to hold back.
    params = SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True)
    assert Sampler({EOS})(torch.tensor([[0.0, 1.0, 8.0, 0.0, 9.0]]), [row(params)])[0].token_id == EOS


# --- logprobs ---------------------------------------------------------------------------------

def test_logprobs_are_log_softmax_of_the_logits_with_the_top_k_best_first():
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.5, 0.0, 0.7]])
    expected = torch.log_softmax(logits, -1)[0]
    params = SamplingParams(temperature=0.0, logprobs=3)
    token = Sampler({EOS})(logits, [row(params)])[0]
    assert token.token_id == 1
    assert token.logprob == pytest.approx(expected[1].item())
    assert [t for t, _ in token.top_logprobs] == [1, 3, 5]
    assert [lp for _, lp in token.top_logprobs] == pytest.approx(expected[[1, 3, 5]].tolist())


def test_logprobs_ignore_temperature_and_truncation():
    logits = torch.tensor([LOGITS])
    params = SamplingParams(temperature=0.3, top_k=1, top_p=0.5, min_p=0.9, logprobs=0)
    token = Sampler({EOS})(logits, [row(params, seed=0)])[0]
    assert token.token_id == 0
    assert token.logprob == pytest.approx(math.log(0.5), abs=1e-6)
    assert token.top_logprobs == []


def test_logprobs_only_for_rows_that_ask():
    logits = torch.tensor([BASE, BASE])
    rows = [row(SamplingParams(temperature=0.0, logprobs=1)), row(SamplingParams(temperature=0.0))]
    asked, not_asked = Sampler({EOS})(logits, rows)
    assert len(asked.top_logprobs) == 1 and asked.logprob is not None
    assert not_asked.logprob is None and not_asked.top_logprobs is None


# --- seeded reproducibility -------------------------------------------------------------------

STEPS = 30
VOCAB = 50
STEP_LOGITS = torch.randn(STEPS, VOCAB, generator=torch.Generator().manual_seed(7)) * 2


def stream(seeded: SamplingRow, others: list[SamplingRow] = (), position: int = 0) -> list[int]:
    """The seeded row's tokens over STEPS steps, sharing each step's batch with `others`."""
    sampler = Sampler({EOS})
    other_logits = torch.Generator().manual_seed(len(others))
    tokens = []
    for step in range(STEPS):
        rows = list(others)
        rows.insert(position, seeded)
        logits = torch.randn(len(rows), VOCAB, generator=other_logits) * 2
        logits[position] = STEP_LOGITS[step]
        tokens.append(sampler(logits, rows)[position].token_id)
    return tokens


SEEDED = SamplingParams(temperature=0.9, top_p=0.9, top_k=20, seed=11)


def test_same_seed_same_tokens():
    assert stream(row(SEEDED, seed=11)) == stream(row(SEEDED, seed=11))


def test_seeded_row_ignores_its_batch_and_position():
    alone = stream(row(SEEDED, seed=11))
    others = [row(SamplingParams(temperature=1.3)), row(SamplingParams(top_p=0.5), seed=2),
              row(SamplingParams(temperature=0.0)), row(SamplingParams(top_k=20, top_p=0.9, temperature=0.9), seed=5)]
    torch.manual_seed(99)  # global RNG state must not matter either
    assert stream(row(SEEDED, seed=11), others, position=2) == alone
    assert stream(row(SEEDED, seed=11), others[::-1], position=4) == alone


def test_different_seeds_different_streams():
    assert stream(row(SEEDED, seed=11)) != stream(row(SEEDED, seed=12))


def test_the_gpu_kernels_reference_chooses_what_the_sampler_does():
    """On a GPU, rows sampled by temperature alone (and greedy rows beside them) take their tokens from
    kernels.sample in one launch; its reference must choose what this module's own path does, uniform for uniform."""
    from localllm.kernels.sample_ref import sample_tokens_ref

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 300, generator=g) * 4
    logits[1, ::3] = math.nan
    logits[2] = -math.inf
    params = [SamplingParams(temperature=t) for t in (0.7, 1.0, 1.3, 0.0, 0.2, 2.0)]
    rows = [row(p, seed=40 + i) for i, p in enumerate(params)]
    uniforms = sampler_module.uniforms_of([row(p, seed=40 + i) for i, p in enumerate(params)], logits.device)
    temperature = torch.tensor([p.temperature for p in params])
    assert torch.equal(Sampler.token_ids(logits, rows), sample_tokens_ref(logits, temperature, uniforms))
