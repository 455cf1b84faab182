"""Greedy output of our engine is token-identical to transformers (fp32) for every architecture and every
scheduling path, and the KV blocks are all returned afterwards."""
from __future__ import annotations

import functools
import random

import pytest

from localllm import LLM, SamplingParams
from tiny_models import CONFIGS, build_model_dir, hf_greedy

ARCHS = list(CONFIGS)
GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module", params=ARCHS)
def model_dir(request, tmp_path_factory):
    return build_model_dir(request.param, tmp_path_factory.mktemp(request.param))


# overlap: each step is scheduled before the previous one's tokens are read back (the GPU default), with inputs of
# sequences whose token is in flight taken from the device tensor
@pytest.fixture(params=[False, True], ids=["sync", "overlap"])
def overlap(request):
    return request.param


@functools.lru_cache(maxsize=None)
def _reference(model_dir, prompt: tuple[int, ...], max_new_tokens: int) -> list[int]:
    return hf_greedy(model_dir, list(prompt), max_new_tokens)


def reference(model_dir, prompt, max_new_tokens):
    return _reference(model_dir, tuple(prompt), max_new_tokens)


def prompts(seed: int, lengths: list[int], vocab: int = 300) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def assert_all_blocks_returned(llm: LLM) -> None:
    manager = llm.engine.core.block_manager
    assert manager.num_free_blocks == len(manager.blocks)
    assert all(b.ref_count == 0 for b in manager.blocks)
    assert not llm.engine.core.scheduler.has_unfinished


def generate_and_check(llm, model_dir, batch, max_tokens, n=1):
    outs = llm.generate(batch, SamplingParams(max_tokens=max_tokens, n=n, **GREEDY))
    for prompt, out in zip(batch, outs):
        expected = reference(model_dir, prompt, max_tokens)
        assert [o.token_ids for o in out.outputs] == [expected] * n
        assert all(o.finish_reason == "length" for o in out.outputs)
    assert_all_blocks_returned(llm)
    return outs


def test_single_prompt(model_dir, overlap):
    llm = LLM(str(model_dir), overlap_steps=overlap, block_size=4, num_kv_blocks=64)
    batch = prompts(1, [11])
    generate_and_check(llm, model_dir, batch, 16)
    stats = llm.engine.core.block_manager.stats
    assert (stats.queries, stats.hits) == (11, 0)


def test_batch_of_different_lengths(model_dir, overlap):
    llm = LLM(str(model_dir), overlap_steps=overlap, block_size=4, num_kv_blocks=128)
    batch = prompts(2, [3, 17, 8, 30, 1])
    generate_and_check(llm, model_dir, batch, 12)
    stats = llm.engine.core.block_manager.stats
    assert (stats.queries, stats.hits) == (3 + 17 + 8 + 30 + 1, 0)


def test_chunked_prefill_small_budget(model_dir, overlap):
    llm = LLM(str(model_dir), overlap_steps=overlap, block_size=4, num_kv_blocks=64, max_num_batched_tokens=5)
    batch = prompts(3, [23, 9, 14])
    steps = []
    original = llm.engine.core.scheduler.schedule

    def spy():
        out = original()
        steps.append([s.num_new_tokens for s in out.scheduled])
        return out

    llm.engine.core.scheduler.schedule = spy
    generate_and_check(llm, model_dir, batch, 10)
    assert max(sum(s) for s in steps) <= 5
    assert any(len(s) > 1 and 1 in s and max(s) > 1 for s in steps), "prefill chunks never mixed with decodes"


def test_preemption_by_tiny_kv_pool(model_dir, overlap):
    llm = LLM(str(model_dir), overlap_steps=overlap, block_size=4, num_kv_blocks=12)
    batch = prompts(4, [10, 9, 11])
    generate_and_check(llm, model_dir, batch, 12)
    assert llm.engine.core.scheduler.num_preemptions > 0


def test_second_request_hits_prefix_cache(model_dir, overlap):
    llm = LLM(str(model_dir), overlap_steps=overlap, block_size=4, num_kv_blocks=64)
    first = prompts(5, [23])[0]
    generate_and_check(llm, model_dir, [first], 6)
    generate_and_check(llm, model_dir, [first], 6)
    # shares the first 10 tokens: blocks 0-1 (tokens 0-7) are whole and equal, block 2 differs
    shared = first[:10] + prompts(6, [9])[0]
    generate_and_check(llm, model_dir, [shared], 6)
    stats = llm.engine.core.block_manager.stats
    # a repeated prompt of 23 tokens finds (23 - 1) // 4 = 5 cached blocks: one token is always recomputed
    assert (stats.queries, stats.hits) == (23 + 23 + 19, 0 + 20 + 8)


def test_n_completions_share_prompt_blocks(model_dir, overlap):
    llm = LLM(str(model_dir), overlap_steps=overlap, block_size=4, num_kv_blocks=64)
    prompt = prompts(7, [14])[0]
    core = llm.engine.core
    core.add_request("r", prompt, SamplingParams(max_tokens=8, n=3, **GREEDY))
    while len(core.requests["r"]) < 3:   # the parent's prefill; the two other completions fork from it
        core.step()
    shared = core.requests["r"][0].block_table[:(14 - 1) // 4]
    assert [core.block_manager.blocks[b].ref_count for b in shared] == [3, 3, 3]
    while core.has_unfinished:
        core.step()
    assert_all_blocks_returned(llm)
    generate_and_check(llm, model_dir, [prompt], 8, n=3)


def test_cached_free_block_count_tracks_the_free_list(model_dir, overlap):
    llm = LLM(str(model_dir), overlap_steps=overlap, block_size=4, num_kv_blocks=24)
    batch = prompts(8, [13, 9, 21, 6])
    generate_and_check(llm, model_dir, batch, 5)
    generate_and_check(llm, model_dir, batch[:2], 5)   # hits, and evictions in a pool this small
    manager = llm.engine.core.block_manager
    assert manager.num_cached_free_blocks == sum(1 for b in manager.free if manager.blocks[b].hash is not None)
    assert manager.num_cached_free_blocks > 0


def test_kv_pool_sized_from_memory_and_capped(model_dir):
    """The CPU pool takes kv_memory_gib, but never more blocks than 4 full-length contexts per sequence slot."""
    from localllm.engine.model_runner import kv_bytes_per_block

    small = LLM(str(model_dir), block_size=4, kv_memory_gib=0.001).engine
    per_block = kv_bytes_per_block(small.hf_config, 4, small.core.dtype)
    assert small.core.num_blocks == int(0.001 * (1 << 30) // per_block)
    large = LLM(str(model_dir), block_size=4, kv_memory_gib=4.0, max_num_seqs=3, max_model_len=50).engine
    assert large.core.num_blocks == 4 * 3 * 13
