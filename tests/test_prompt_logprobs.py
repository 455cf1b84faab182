"""Prompt logprobs (SamplingParams.prompt_logprobs) through the whole engine on tiny models: each prompt token's
logprob and top k equal transformers' in float32, with the prompt chunked over several steps, again for a prompt whose
prefix is cached (it is computed anew, not skipped), beside other requests, and with overlapped steps."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from localllm import LLM, SamplingParams
from tiny_models import build_model_dir

PROMPT = [5, 17, 42, 99, 3, 7, 8, 11, 23, 57, 2, 9, 64, 31, 100, 12, 6, 77, 45]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def model_dir(request, tmp_path_factory):
    return build_model_dir(request.param, tmp_path_factory.mktemp(request.param))


def transformers_scores(model_dir, prompt: list[int], k: int) -> list[tuple[int, float, list[int]]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), -1)
    return [(prompt[i + 1], logprobs[i, prompt[i + 1]].item(), logprobs[i].topk(k).indices.tolist())
            for i in range(len(prompt) - 1)]


def engine_scores(output) -> list[tuple[int, float, list[int]]]:
    assert output.prompt_logprobs[0] is None   # nothing comes before the first prompt token
    return [(e.token_id, e.logprob, [i for i, _ in e.top_logprobs]) for e in output.prompt_logprobs[1:]]


def assert_equal_scores(got, want) -> None:
    assert [(t, top) for t, _, top in got] == [(t, top) for t, _, top in want]
    assert [lp for _, lp, _ in got] == pytest.approx([lp for _, lp, _ in want], abs=1e-4)


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
def test_prompt_logprobs_equal_transformers_chunked_cached_and_batched(model_dir, overlap):
    want = transformers_scores(model_dir, PROMPT, 3)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, prompt_logprobs=3)
    # a budget of 8 tokens a step: the 19-token prompt is computed over three steps
    with LLM(str(model_dir), block_size=4, num_kv_blocks=64, max_num_batched_tokens=8,
             overlap_steps=overlap) as llm:
        first = llm.generate([PROMPT], params)[0]
        assert_equal_scores(engine_scores(first), want)
        plain = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))[0]
        assert plain.prompt_logprobs is None and plain.outputs[0].token_ids == first.outputs[0].token_ids
        hits = llm.engine.core.block_manager.stats.hits
        # its prefix is cached now, and still every prompt token is computed and scored, beside a plain request
        again, other = llm.generate([PROMPT, PROMPT[:7]], [params, SamplingParams(max_tokens=2)])
        assert_equal_scores(engine_scores(again), want)
        assert other.prompt_logprobs is None
        assert llm.engine.core.block_manager.stats.hits > hits   # the plain request did use the cache
        manager = llm.engine.core.block_manager
        assert manager.num_free_blocks == len(manager.blocks)


def test_a_preempted_scoring_prompt_is_scored_once(model_dir):
    """A pool too small for everyone: sequences are preempted and recomputed, the scoring one among them (here twice:
    17 tokens into its prompt, then 10 tokens into computing it again), and each of its prompt tokens is still scored
    exactly once, in order."""
    want = transformers_scores(model_dir, PROMPT, 2)
    others = [[(5 * i + 3 * j) % 300 for j in range(9)] for i in range(3)]
    with LLM(str(model_dir), block_size=4, num_kv_blocks=16, max_num_batched_tokens=8) as llm:
        params = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)] * 3 + [
            SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=2)]
        scored = llm.generate(others + [PROMPT], params)[-1]
        assert llm.engine.core.scheduler.num_preemptions > 0
        assert_equal_scores(engine_scores(scored), want)


def test_every_completion_of_n_carries_them_and_a_one_token_prompt_has_none(model_dir):
    with LLM(str(model_dir), block_size=4, num_kv_blocks=64) as llm:
        out = llm.generate([PROMPT[:6]], SamplingParams(n=2, max_tokens=2, seed=1, prompt_logprobs=0))[0]
        assert [e.token_id for e in out.prompt_logprobs[1:]] == PROMPT[1:6]
        assert all(e.top_logprobs == [] for e in out.prompt_logprobs[1:])
        single = llm.generate([PROMPT[:1]], SamplingParams(max_tokens=2, prompt_logprobs=1))[0]
        assert single.prompt_logprobs == [None]
        best = llm.generate([PROMPT], SamplingParams(max_tokens=1, prompt_logprobs=1))[0]   # lm-eval's one
        assert_equal_scores(engine_scores(best), transformers_scores(model_dir, PROMPT, 1))


def test_prompt_logprobs_are_checked():
    with pytest.raises(ValueError, match=r"prompt_logprobs must be in \[0, 20\]"):
        SamplingParams(prompt_logprobs=21)
