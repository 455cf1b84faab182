"""Sampling is total: every SamplingParams the validator accepts yields a token inside the vocabulary, through
the engine's synchronous and overlapped paths, whatever the logits hold (NaN, +-inf); what cannot be honoured
is refused with a ValueError before it reaches an engine."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from localllm import LLM, SamplingParams
from localllm.engine.sampler import Sampler, SamplingRow
from tiny_models import build_model_dir

EOS = 4
NAN, INF = float("nan"), float("inf")
PROMPTS = [[1, 2, 3], [7, 8, 9, 10, 11]]


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "overlapped"])
def llm(request, tmp_path_factory):
    model_dir = build_model_dir("llama", tmp_path_factory.mktemp("llama"))
    return LLM(str(model_dir), num_kv_blocks=64, block_size=4, num_threads=1, overlap_steps=request.param)


def greedy_tokens(llm: LLM, **extra) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, **extra)
    return [out.outputs[0].token_ids for out in llm.generate(PROMPTS, params)]


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 5e-324, 1e-7])
def test_temperatures_too_small_for_float32_are_greedy(llm, temperature):
    params = SamplingParams(temperature=temperature, max_tokens=6, ignore_eos=True, seed=3)
    outputs = llm.generate(PROMPTS, params)
    assert [out.outputs[0].token_ids for out in outputs] == greedy_tokens(llm)


@pytest.mark.parametrize("field, value", [
    ("temperature", INF), ("temperature", NAN), ("temperature", 1e300), ("temperature", 101.0),
    ("repetition_penalty", 1e-300), ("repetition_penalty", 1e-3), ("repetition_penalty", INF),
    ("repetition_penalty", 1e300), ("repetition_penalty", NAN), ("top_p", NAN), ("min_p", NAN),
    ("presence_penalty", NAN), ("frequency_penalty", -INF), ("stop_token_ids", [-1]), ("seed", 2 ** 64),
])
def test_values_that_cannot_be_honoured_are_refused(field, value):
    with pytest.raises(ValueError, match=f"^{field} "):
        SamplingParams(**{field: value})


def test_infinite_temperature_with_min_tokens_is_refused():
    with pytest.raises(ValueError, match="^temperature "):
        SamplingParams(temperature=INF, min_tokens=5)


def test_widest_accepted_values_generate(llm):
    extremes = [SamplingParams(temperature=100.0, min_tokens=5, max_tokens=6, seed=1),
                SamplingParams(repetition_penalty=0.01, max_tokens=6, seed=2),
                SamplingParams(repetition_penalty=100.0, temperature=1e-5, max_tokens=6, seed=3)]
    for params in extremes:
        for out in llm.generate(PROMPTS, params):
            tokens = out.outputs[0].token_ids
            assert tokens and all(0 <= t < llm.engine.core.vocab_size for t in tokens)


def test_stop_token_ids_outside_the_vocabulary_are_refused_by_the_engine(llm):
    with pytest.raises(ValueError, match="stop token id 100000 is outside the vocabulary"):
        llm.generate(PROMPTS, SamplingParams(min_tokens=2, max_tokens=4, stop_token_ids=[100000]))
    assert llm.generate(PROMPTS, SamplingParams(max_tokens=2))   # the engine is still usable


# --- non-finite logits, straight into the sampler (what a model that overflows would hand it) ----------

ROW_PARAMS = [SamplingParams(), SamplingParams(top_k=3), SamplingParams(top_p=0.5), SamplingParams(min_p=0.2),
              SamplingParams(temperature=0.7, logprobs=2), SamplingParams(temperature=0.0)]


def both_paths(logits: torch.Tensor, params: SamplingParams) -> list[int]:
    """The token chosen by Sampler.__call__ and by Sampler.token_ids, for one row, several draws each."""
    chosen = []
    for seed in range(20):
        rows = [SamplingRow(params, [], [], torch.Generator().manual_seed(seed))]
        chosen.append(Sampler({EOS})(logits[None], rows)[0].token_id)
        if not Sampler.needs_host(params):
            chosen.append(int(Sampler.token_ids(logits[None], rows)[0]))
    return chosen


@pytest.mark.parametrize("params", ROW_PARAMS)
def test_nan_logits_are_never_chosen(params):
    logits = torch.tensor([NAN, 1.0, NAN, 0.5, 0.2, NAN])
    assert set(both_paths(logits, params)) <= {1, 3, 4}


@pytest.mark.parametrize("params", ROW_PARAMS)
def test_infinite_logits_take_all_the_probability(params):
    logits = torch.tensor([0.0, INF, 2.0, NAN, INF, -INF])
    assert set(both_paths(logits, params)) <= {1, 4}


@pytest.mark.parametrize("params", ROW_PARAMS)
def test_a_row_with_no_finite_logit_still_gives_a_token(params):
    for logits in (torch.full((6,), NAN), torch.full((6,), -INF), torch.tensor([NAN, -INF, NAN, -INF, -INF, NAN])):
        assert all(0 <= t < 6 for t in both_paths(logits, params))


def test_a_row_whose_only_finite_token_is_banned_by_min_tokens_gives_a_token():
    logits = torch.tensor([-INF, -INF, -INF, -INF, 3.0])
    rows = [SamplingRow(SamplingParams(min_tokens=3), [], [], None)]
    assert 0 <= Sampler({EOS})(logits[None], rows)[0].token_id < 5


def test_logprobs_of_non_finite_logits_are_never_nan():
    logits = torch.tensor([[NAN, 1.0, INF, 0.5], [NAN, NAN, NAN, NAN]])
    rows = [SamplingRow(SamplingParams(temperature=0.0, logprobs=3), [], [], None)] * 2
    for token in Sampler({EOS})(logits, rows):
        assert not math.isnan(token.logprob)
        assert not any(math.isnan(value) for _, value in token.top_logprobs)


# --- the whole SamplingParams space on a tiny model ----------------------------------------------------

EDGE_FLOATS = [0.0, -0.0, 5e-324, 1e-300, 1e-45, 1e-38, 1e-6, 1e-5, 0.01, 0.5, 1.0, 2.0, 100.0, 3.5e38, 1e300,
               INF, -INF, NAN, -1.0, -2.0]
ANY_FLOAT = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats())   # st.floats() has subnormals, huge, inf, nan
# Values the validator accepts, boundaries and subnormals included (hypothesis favours the ends of a range).
ACCEPTED = {
    "n": st.integers(1, 3),
    "temperature": st.one_of(st.sampled_from([0.0, 5e-324, 1e-300, 1e-45, 1e-5, 100.0]), st.floats(0.0, 100.0)),
    "top_p": st.floats(0.0, 1.0, exclude_min=True),
    "top_k": st.one_of(st.integers(-1, 400), st.just(10 ** 12)),
    "min_p": st.floats(0.0, 1.0),
    "repetition_penalty": st.floats(0.01, 100.0),
    "presence_penalty": st.floats(-2.0, 2.0),
    "frequency_penalty": st.floats(-2.0, 2.0),
    "seed": st.one_of(st.none(), st.integers(-(2 ** 63), 2 ** 63 - 1)),
    "max_tokens": st.integers(1, 6),
    "min_tokens": st.integers(0, 6),
    "stop_token_ids": st.lists(st.integers(0, 330), max_size=3),
    "ignore_eos": st.booleans(),
    "logprobs": st.one_of(st.none(), st.integers(0, 20)),
}
# Anything of the right type, most of it refused.
ARBITRARY = {
    **{name: ANY_FLOAT for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                                    "frequency_penalty")},
    "n": st.integers(-2, 0), "top_k": st.integers(-(2 ** 70), 2 ** 70), "seed": st.integers(-(2 ** 70), 2 ** 70),
    "max_tokens": st.integers(-2, 0), "min_tokens": st.integers(-2, 9),
    "stop_token_ids": st.lists(st.integers(-3, 330)),
    "ignore_eos": st.booleans(), "logprobs": st.integers(-3, 25),
}


@st.composite
def any_params(draw) -> dict:
    """Accepted values for every field, then arbitrary ones for a few of them: each example is mostly valid, so
    that generation runs often, and odd values meet every combination of the others."""
    fields = {name: draw(strategy) for name, strategy in ACCEPTED.items()}
    for name in draw(st.lists(st.sampled_from(sorted(ARBITRARY)), max_size=3, unique=True)):
        fields[name] = draw(ARBITRARY[name])
    return fields


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(any_params(), min_size=1, max_size=3))
def test_every_accepted_sampling_params_generates_tokens_in_the_vocabulary(llm, batch):
    params = []
    for fields in batch:
        try:
            params.append(SamplingParams(**fields))
        except ValueError:
            continue
    event(f"{len(params)} of {len(batch)} accepted")
    if not params:
        return
    vocab_size = llm.engine.core.vocab_size
    outputs = llm.generate([PROMPTS[i % 2] for i in range(len(params))], params)
    for p, out in zip(params, outputs):
        assert len(out.outputs) == p.n
        for completion in out.outputs:
            assert completion.finish_reason in ("stop", "length")
            assert 1 <= len(completion.token_ids) <= p.max_tokens
            assert all(0 <= t < vocab_size for t in completion.token_ids)
            if completion.finish_reason == "stop":
                assert len(completion.token_ids) >= p.min_tokens
            for token in completion.logprobs or []:
                assert not math.isnan(token.logprob)
