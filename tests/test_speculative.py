"""Speculative decoding (n-gram drafts) through the whole engine on a tiny random-weight model: the same greedy
tokens as decoding one token at a time, in batches mixing sequences that verify drafts with ones that do not;
exact block accounting after rejected drafts and after preemption; max_tokens and stops never overrun; the
adaptive switch-off; and the proposer's matching itself. Verifying steps laid out as chunks (the CPU default) and
uniformly, padded to 1 + num_speculative_tokens rows per sequence (the layout the GPU's verify graphs replay)."""
from __future__ import annotations

import numpy as np
import pytest

from localllm import LLM, SamplingParams
from localllm.engine.batch import H
from localllm.engine.speculation import ngram_match
from tiny_models import build_model_dir

BLOCK = 4
# repetitive prompts: the model's greedy continuations repeat parts of them, so drafts are proposed and some kept
LOOP = [5, 17, 42, 99, 23, 7, 61, 88]
PROMPTS = [LOOP * 6, [3, 4, 5, 6], LOOP[:5] * 4 + [9, 10], [30, 31, 32, 30, 31, 32, 30, 31]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_model_dir("llama", tmp_path_factory.mktemp("llama")))


LAYOUTS = dict(argnames="layout", argvalues=["chunks", "uniform"])


def engine(model_dir: str, speculative: str = "off", overlap: bool = False, layout: str = "chunks",
           **config) -> LLM:
    config.setdefault("num_kv_blocks", 160)
    return LLM(model_dir, block_size=BLOCK, num_threads=1, overlap_steps=overlap, speculative=speculative,
               uniform_verify_steps=layout == "uniform", **config)


@pytest.fixture(scope="module")
def plain(model_dir):
    return engine(model_dir)


def greedy(max_tokens=32, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def assert_all_blocks_returned(llm: LLM) -> None:
    manager = llm.engine.core.block_manager
    assert manager.num_free_blocks == len(manager.blocks)
    assert all(b.ref_count == 0 for b in manager.blocks)


def assert_exact_blocks(llm: LLM) -> None:
    """Every live sequence holds exactly the blocks its computed tokens need, and every block's reference count is
    the number of block tables holding it."""
    core = llm.engine.core
    manager = core.block_manager
    holders: dict[int, int] = {}
    for seqs in core.requests.values():
        for seq in seqs:
            if seq.is_finished:
                continue
            assert len(seq.block_table) == -(-seq.num_computed_tokens // BLOCK), (seq.num_computed_tokens,
                                                                                  seq.block_table)
            for block_id in seq.block_table:
                holders[block_id] = holders.get(block_id, 0) + 1
    assert {b.block_id: b.ref_count for b in manager.blocks if b.ref_count} == holders
    assert manager.num_free_blocks == len(manager.blocks) - len(holders)


def record_verify_steps(llm: LLM) -> list[list[int]]:
    """The drafts each sampling sequence verified, step by step."""
    steps: list[list[int]] = []
    core = llm.engine.core
    verifier = core.verifier

    class Recording:
        def __call__(self, logits, seqs, num_drafts):
            steps.append(list(num_drafts))
            return verifier(logits, seqs, num_drafts)

    core.verifier = Recording()
    return steps


def record_layouts(llm: LLM) -> list[tuple[int, list[int]]]:
    """Per step packed: its rows per sequence when laid out uniformly (0: as chunks), and the drafts each sampling
    sequence verifies."""
    packed_steps: list[tuple[int, list[int]]] = []
    builder = llm.engine.core.batch_builder
    pack = builder.pack

    def recording(scheduled):
        packed = pack(scheduled)
        packed_steps.append((int(packed.header[H["uniform_query_len"]]), list(packed.num_drafts)))
        return packed

    builder.pack = recording
    return packed_steps


def assert_layout_used(layout: str, packed_steps: list[tuple[int, list[int]]], query_len: int = 5) -> None:
    """Uniform: the verifying steps were laid out uniformly, some with padded sequences (a plain decode, or fewer
    drafts than the most); chunks: none was."""
    uniform = [drafts for query_len, drafts in packed_steps if query_len]
    if layout == "chunks":
        assert not uniform
        return
    assert all(rows in (0, query_len) for rows, _ in packed_steps)
    assert len(uniform) == sum(1 for _, drafts in packed_steps if any(drafts))
    assert any(min(drafts) < query_len - 1 for drafts in uniform)


def run_checked(llm: LLM, prompts, params) -> dict[str, list]:
    """Generates step by step, checking the block accounting after every step; token ids and finish reason of
    each completion, in request order."""
    engine_ = llm.engine
    ids = []
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        ids.append(f"r{i}")
        engine_.add_request(f"r{i}", prompt, p)
    out: dict[tuple[str, int], list] = {}
    while engine_.has_unfinished:
        for delta in engine_.step():
            entry = out.setdefault((delta.request_id, delta.index), [[], None])
            entry[0] += delta.token_ids
            entry[1] = delta.finish_reason
        assert_exact_blocks(llm)
    return {key: value for key, value in sorted(out.items())}


def test_ngram_match_prefers_the_longest_then_the_latest_suffix():
    # last three tokens 1 2 3 occur at 0 and 4: the latest is followed by 8
    assert ngram_match(np.array([1, 2, 3, 9, 1, 2, 3, 8, 5, 1, 2, 3])) == 7
    # no earlier 7 3; an earlier 3 at index 2, followed by index 3
    assert ngram_match(np.array([1, 2, 3, 9, 7, 3])) == 3
    assert ngram_match(np.array([1, 2, 3])) is None
    assert ngram_match(np.array([4])) is None


@pytest.mark.parametrize(**LAYOUTS)
@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
def test_greedy_tokens_equal_decoding_without_speculation(model_dir, plain, overlap, layout):
    params = [greedy(40), greedy(24, logit_bias={7: 100.0}), greedy(40, repetition_penalty=1.3),
              greedy(33, n=2, logprobs=2)]
    expected = plain.generate(PROMPTS, params)
    llm = engine(model_dir, "ngram", overlap, layout)
    steps = record_verify_steps(llm)
    packed_steps = record_layouts(llm)
    got = llm.generate(PROMPTS, params)
    for e, g in zip(expected, got):
        for eo, go in zip(e.outputs, g.outputs):
            assert go.token_ids == eo.token_ids and go.finish_reason == eo.finish_reason
            if eo.logprobs is not None:
                assert [t.token_id for t in go.logprobs] == eo.token_ids
                assert [t.logprob for t in go.logprobs] == pytest.approx([t.logprob for t in eo.logprobs], abs=1e-4)
    assert got[1].outputs[0].token_ids == [7] * 24   # the bias holds in verified steps too
    stats = llm.engine.core.speculator.stats
    assert 0 < stats.accepted < stats.proposed   # drafts were kept and drafts were rejected
    # steps in which some sequences verified drafts while others decoded plainly
    assert any(0 in drafts and any(drafts) for drafts in steps)
    assert_layout_used(layout, packed_steps)
    assert_all_blocks_returned(llm)


@pytest.mark.parametrize(**LAYOUTS)
def test_exact_blocks_after_rejections_and_preemption(model_dir, layout):
    prompts = [LOOP * 3, LOOP[2:] * 3, [30, 31, 32] * 6, LOOP[:4] * 5]
    params = [greedy(36) for _ in prompts]
    roomy = run_checked(engine(model_dir), prompts, params)
    # 24 blocks of 4 tokens cannot hold four sequences of ~60 tokens: the newest are preempted and recomputed
    llm = engine(model_dir, "ngram", layout=layout, num_kv_blocks=24)
    packed_steps = record_layouts(llm)
    got = run_checked(llm, prompts, params)
    assert got == roomy
    assert_layout_used(layout, packed_steps)
    core = llm.engine.core
    assert core.scheduler.num_preemptions > 0
    assert 0 < core.speculator.stats.accepted < core.speculator.stats.proposed
    assert_all_blocks_returned(llm)


@pytest.mark.parametrize(**LAYOUTS)
def test_block_table_is_trimmed_after_a_rejection(model_dir, layout):
    """Forced rejection of every draft: after each verifying step the sequence holds the blocks of its last token
    and nothing for the rejected drafts, and the released blocks are the first to be reused."""
    llm = engine(model_dir, "ngram", layout=layout, num_speculative_tokens=8, speculative_accept_prob=0.0)
    steps = record_verify_steps(llm)
    packed_steps = record_layouts(llm)
    out = run_checked(llm, [LOOP * 2], [greedy(8)])
    assert any(any(d) for d in steps)
    assert_layout_used(layout, packed_steps, query_len=9)
    assert len(out[("r0", 0)][0]) == 8
    assert llm.engine.core.speculator.stats.accepted == 0
    assert_all_blocks_returned(llm)


def test_forced_acceptance_never_passes_max_tokens_or_a_stop(model_dir):
    """With every draft accepted (drafts copy the prompt), max_tokens and a stop token inside an accepted run of
    drafts end the output exactly there."""
    llm = engine(model_dir, "ngram", speculative_accept_prob=1.0)
    steps = record_verify_steps(llm)
    prompt = list(range(40, 80))
    out = llm.generate([prompt], greedy(13))[0].outputs[0]
    assert len(out.token_ids) == 13 and out.finish_reason == "length"
    verifying = [d for drafts in steps for d in drafts if d]
    # 12 tokens after the first in verifying steps of up to 4 drafts + 1: the last one has room for 2 drafts only
    assert sum(verifying) + len(verifying) == 12 and max(verifying) == 4
    stats = llm.engine.core.speculator.stats
    assert stats.accepted == stats.proposed == sum(verifying)
    stop = out.token_ids[7]
    first = out.token_ids.index(stop)
    stopped = llm.generate([prompt], greedy(30, stop_token_ids=[stop]))[0].outputs[0]
    assert stopped.token_ids == out.token_ids[:first + 1] and stopped.finish_reason == "stop"
    assert_all_blocks_returned(llm)


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
def test_speculation_switches_itself_off_where_nothing_is_accepted(model_dir, overlap):
    llm = engine(model_dir, "ngram", overlap, speculative_accept_prob=0.0)
    steps = record_verify_steps(llm)
    llm.generate([LOOP * 2], greedy(200))
    verifying = sum(1 for drafts in steps if any(drafts))
    # 4 failures turn it off for 16 steps, then 32, 64, ...: 4 rounds of 4 verifying steps in 200 tokens (the off
    # periods run overlapped, and it comes back from them)
    assert 12 <= verifying <= 16


def test_no_speculation_beyond_the_batch_limit(model_dir):
    llm = engine(model_dir, "ngram", speculative_batch_limit=1)
    llm.generate([LOOP * 3, LOOP * 3], greedy(20))
    assert llm.engine.core.speculator.stats.proposed == 0
    llm.generate([LOOP * 3], greedy(20))
    assert llm.engine.core.speculator.stats.proposed > 0


def test_guided_sequences_do_not_speculate_beside_ones_that_do(model_dir, plain):
    """A guided sequence decodes plainly, its grammar mask landing on its own row of a step in which another
    sequence verifies drafts (rows before it belong to that sequence's drafts)."""
    from localllm.sampling_params import Guidance

    guided = SamplingParams(temperature=0, max_tokens=16, guidance=Guidance("json_object"))
    prompts, params = [LOOP * 6, LOOP * 3], [greedy(40), guided]
    expected = [o.outputs[0].token_ids for o in plain.generate(prompts, params)]
    llm = engine(model_dir, "ngram")
    core = llm.engine.core
    verifier, steps = core.verifier, []

    class Recording:   # (guided, drafts) of each sampling sequence, step by step
        def __call__(self, logits, seqs, num_drafts):
            steps.append([(seq.matcher is not None, k) for seq, k in zip(seqs, num_drafts)])
            return verifier(logits, seqs, num_drafts)

    core.verifier = Recording()
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == expected
    assert core.speculator.stats.proposed > 0
    both = [dict(step) for step in steps if len(step) == 2]
    assert all(step[True] == 0 for step in both) and any(step[False] > 0 for step in both)


@pytest.mark.parametrize("setting, message", [
    ({"speculative": "draft:"}, "needs a model after 'draft:'"),
    ({"speculative": "draft:some/model", "tensor_parallel_size": 2}, "draft model needs tensor_parallel_size 1"),
    ({"speculative": "medusa"}, "speculative must be one of off, ngram"),
    ({"speculative": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be in"),
    ({"speculative_accept_prob": 0.5}, "needs speculative decoding on"),
])
def test_bad_settings_are_refused(setting, message):
    from localllm.config import Config

    with pytest.raises(ValueError, match=message):
        Config(**setting)


@pytest.mark.parametrize(**LAYOUTS)
def test_two_ranks_verify_drafts_as_one(tmp_path, layout):
    """Tensor parallelism (gloo on CPU): the workers run verifying steps from the same step description (chunks, or
    the uniform layout the header announces), so two ranks with drafts give one rank's tokens without them,
    preemption included."""
    from tiny_models import TP_CONFIGS

    model_dir = str(build_model_dir("llama", tmp_path / "llama", configs=TP_CONFIGS))
    params = [greedy(24), greedy(24, repetition_penalty=1.2), greedy(24)]
    prompts = PROMPTS[:3]
    expected = [o.outputs[0].token_ids for o in engine(model_dir).generate(prompts, params)]
    with engine(model_dir, "ngram", True, layout, tensor_parallel_size=2, num_kv_blocks=30) as llm:
        packed_steps = record_layouts(llm)
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == expected
        assert_layout_used(layout, packed_steps)
        core = llm.engine.core
        assert 0 < core.speculator.stats.accepted and core.scheduler.num_preemptions > 0
        assert_all_blocks_returned(llm)
