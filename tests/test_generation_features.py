"""Sampling features through the whole engine, on a tiny model: stop strings, stop ids, seeds, logprobs,
min/max tokens; every scenario returns all its KV blocks."""
from __future__ import annotations

import pytest

from localllm import LLM, SamplingParams
from tiny_models import build_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir("qwen3", tmp_path_factory.mktemp("qwen3"))


# overlap: steps scheduled before the previous step's tokens are read back (the GPU default)
@pytest.fixture(scope="module", params=[False, True], ids=["sync", "overlap"])
def llm(request, model_dir):
    return LLM(str(model_dir), block_size=4, num_kv_blocks=96, overlap_steps=request.param)


@pytest.fixture(autouse=True)
def blocks_all_returned(llm):
    yield
    manager = llm.engine.core.block_manager
    assert manager.num_free_blocks == len(manager.blocks)
    assert all(b.ref_count == 0 for b in manager.blocks)


PROMPT = [5, 17, 42, 99, 3, 7, 8]


def greedy_text(llm, max_tokens=24):
    return llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))[0].outputs[0]


def test_stop_string_cut_and_not_leaked(llm):
    full = greedy_text(llm)
    # a stop string made of the middle of the generated text, likely spanning token boundaries
    stop = full.text[len(full.text) // 3: len(full.text) // 3 + 3]
    assert len(stop) == 3
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]))[0]
    text = out.outputs[0].text
    assert out.outputs[0].finish_reason == "stop"
    assert text == full.text[: full.text.index(stop)]
    streamed = "".join(d.text for d in llm.stream(PROMPT, SamplingParams(temperature=0, max_tokens=24,
                                                                           ignore_eos=True, stop=[stop])))
    assert streamed == text


def test_stop_token_id(llm):
    full = greedy_text(llm, 12)
    stop_id = full.token_ids[5]
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                stop_token_ids=[stop_id]))[0].outputs[0]
    first = full.token_ids.index(stop_id)
    assert out.token_ids == full.token_ids[: first + 1]
    assert out.finish_reason == "stop"


def test_min_tokens_holds_back_stop_ids(llm):
    first = greedy_text(llm, 4).token_ids[0]
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=9, min_tokens=5, ignore_eos=True,
                                                stop_token_ids=[first]))[0].outputs[0]
    assert first not in out.token_ids[:5]
    assert len(out.token_ids) >= 5
    assert out.finish_reason == ("stop" if out.token_ids[-1] == first else "length")
    assert len(out.token_ids) == 9 or out.finish_reason == "stop"


def test_seeded_sampling_reproducible_regardless_of_batch(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate([PROMPT], params)[0].outputs[0].token_ids
    others = SamplingParams(temperature=0.8, max_tokens=10, ignore_eos=True)
    batch = llm.generate([[9, 9, 9], PROMPT, [1, 2]], [others, params, others])
    assert batch[1].outputs[0].token_ids == alone
    other_seed = llm.generate([PROMPT], SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=16,
                                                      ignore_eos=True))[0].outputs[0].token_ids
    assert other_seed != alone


def test_n_seeded_completions_differ_and_repeat(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True)
    first = [o.token_ids for o in llm.generate([PROMPT], params)[0].outputs]
    again = [o.token_ids for o in llm.generate([PROMPT], params)[0].outputs]
    assert first == again
    assert len({tuple(t) for t in first}) == 3


def test_logprobs(llm):
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=3))[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == 5
    for token_id, entry in zip(completion.token_ids, completion.logprobs):
        assert entry.token_id == token_id
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0] == (token_id, entry.logprob)   # greedy takes the most likely token
        assert entry.logprob <= 0.0


def test_logit_bias_forces_and_bans_tokens(llm):
    """Through the host's sampler (sync) and the on-device pick of overlapped steps alike."""
    full = greedy_text(llm, 8)
    forced = full.token_ids[3]
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                                logit_bias={forced: 100}))[0].outputs[0]
    assert out.token_ids == [forced] * 6
    top_two = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True,
                                                    logprobs=2))[0].outputs[0].logprobs[0].top_logprobs
    banned = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True,
                                                   logit_bias={top_two[0][0]: -100}))[0].outputs[0]
    assert banned.token_ids == [top_two[1][0]]   # the runner-up, as the unbiased step ranked it
    with pytest.raises(ValueError, match="logit_bias token id 1000000 is outside the vocabulary"):
        llm.generate([PROMPT], SamplingParams(max_tokens=1, logit_bias={1_000_000: 1}))


def test_abort_frees_blocks_at_once(llm):
    core = llm.engine.core
    stream = llm.stream(list(range(1, 40)), SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    next(stream)
    assert core.block_manager.num_free_blocks < len(core.block_manager.blocks)
    stream.close()
    assert not core.scheduler.has_unfinished
    assert core.block_manager.num_free_blocks == len(core.block_manager.blocks)
