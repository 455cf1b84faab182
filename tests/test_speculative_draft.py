"""Speculative decoding with a draft model (speculative=draft:MODEL) through the whole engine on tiny random-weight
models: greedy output token-identical to decoding without speculation with the target as its own draft (every draft
accepted), a slightly perturbed copy of it (some accepted) and an unrelated model of the same vocabulary (none
accepted); in batches mixing verifying and plain sequences, with chunked prefill, prefix-cache hits and preemption,
exact block accounting after every step; and the one-line errors of a draft model that cannot serve."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from localllm import LLM
from localllm.errors import LocalLLMError, ModelNotFoundError
from test_speculative import (LOOP, PROMPTS, assert_all_blocks_returned, engine, greedy, record_layouts,
                              record_verify_steps, run_checked)
from tiny_models import build_model_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The target, a perturbed copy of it, an unrelated llama of the same vocabulary, a qwen2 of another."""
    root = tmp_path_factory.mktemp("draft-models")
    target = build_model_dir("llama", root / "target")
    perturbed = root / "perturbed"
    shutil.copytree(target, perturbed)
    torch.manual_seed(7)
    for path in perturbed.glob("*.safetensors"):
        weights = load_file(path)
        save_file({k: v + 0.04 * torch.randn_like(v) if v.dim() > 1 else v for k, v in weights.items()}, path,
                  metadata={"format": "pt"})
    return {"target": str(target), "perturbed": str(perturbed),
            "unrelated": str(build_model_dir("llama", root / "unrelated", seed=1)),
            "other-vocabulary": str(build_model_dir("qwen2", root / "qwen2"))}


@pytest.fixture(scope="module")
def plain(models):
    return engine(models["target"])


LAYOUTS = dict(argnames="layout", argvalues=["chunks", "uniform"])


def assert_layout_used(layout: str, packed_steps: list[tuple[int, list[int]]]) -> None:
    """Uniform: verifying steps without a prefill chunk beside them (a fork's, say) were laid out uniformly, with 5
    rows per sequence; chunks: none was."""
    uniform = [rows for rows, _ in packed_steps if rows]
    assert all(rows == 5 for rows in uniform)
    assert bool(uniform) == (layout == "uniform")


def assert_acceptance(llm: LLM, draft: str) -> None:
    stats = llm.engine.core.speculator.stats
    assert stats.proposed > 0
    if draft == "target":   # the target proposes its own greedy tokens: all kept
        assert stats.accepted == stats.proposed
    elif draft == "perturbed":
        assert 0 < stats.accepted < stats.proposed
    else:
        assert stats.accepted < stats.proposed / 4


@pytest.mark.parametrize(**LAYOUTS)
@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
@pytest.mark.parametrize("draft", ["target", "perturbed", "unrelated"])
def test_greedy_tokens_equal_decoding_without_speculation(models, plain, draft, overlap, layout):
    # a penalty changes the target's choice, not the draft model's: with the target as its own draft, none, so that
    # every draft is kept
    penalised = greedy(40, repetition_penalty=1.3) if draft != "target" else greedy(40)
    params = [greedy(40), greedy(24), penalised, greedy(33, n=2)]
    expected = run_checked(plain, PROMPTS, params)
    llm = engine(models["target"], f"draft:{models[draft]}", overlap, layout)
    steps = record_verify_steps(llm)
    packed_steps = record_layouts(llm)
    assert run_checked(llm, PROMPTS, params) == expected
    assert_acceptance(llm, draft)
    # steps in which some sequences verified drafts while others decoded plainly
    assert any(0 in drafts and any(drafts) for drafts in steps)
    if draft != "unrelated":   # which soon stops speculating
        assert_layout_used(layout, packed_steps)
    assert_all_blocks_returned(llm)


@pytest.mark.parametrize("draft", ["target", "perturbed"])
def test_chunked_prefill_prefix_hits_and_preemption(models, draft):
    """A 16-token step budget (prompts prefilled in chunks, decodes left out of full steps), prompts sharing cached
    prefixes with earlier ones, and a pool too small for all: the draft model's KV follows the target's blocks."""
    first = [LOOP * 3, [30, 31, 32] * 6]
    later = [LOOP * 3 + [9, 10, 11], LOOP * 2 + [3], [30, 31, 32] * 6 + LOOP[:3]]
    params = [greedy(30) for _ in later]
    config = dict(max_num_batched_tokens=16, num_kv_blocks=30)
    plain_ = engine(models["target"], **config)
    expected = [run_checked(plain_, first, params[:2]), run_checked(plain_, later, params)]
    llm = engine(models["target"], f"draft:{models[draft]}", **config)
    assert [run_checked(llm, first, params[:2]), run_checked(llm, later, params)] == expected
    core = llm.engine.core
    assert core.block_manager.stats.hits > 0 and core.scheduler.num_preemptions > 0
    assert_acceptance(llm, draft)
    assert_all_blocks_returned(llm)


def test_draft_kv_pool_mirrors_the_targets(models):
    """As many blocks as the target's, sized together: a CPU budget holds fewer blocks with a draft model."""
    alone = engine(models["target"], num_kv_blocks=None, kv_memory_gib=0.001)
    with_draft = engine(models["target"], f"draft:{models['target']}", num_kv_blocks=None, kv_memory_gib=0.001)
    core = with_draft.engine.core
    assert core.draft.runner.kv_cache.shape[2] == core.num_blocks == alone.engine.core.num_blocks // 2
    assert core.speculator.draft is core.draft


def test_a_draft_model_of_another_vocabulary_is_refused(models):
    with pytest.raises(LocalLLMError, match=r"vocabulary of 301 tokens, the target's has 331"):
        engine(models["target"], f"draft:{models['other-vocabulary']}")


def test_a_missing_draft_model_is_refused(models, tmp_path):
    with pytest.raises(ModelNotFoundError, match="^draft model: "):
        engine(models["target"], f"draft:{tmp_path / 'nothing-here'}")


def test_proposing_steps_take_blocks_only_while_every_running_sequence_keeps_one(models):
    """The draft steps of k drafts write positions last .. last + k - 1: their blocks are allocated while a free block
    per running sequence remains, else k is cut to the sequence's allocated blocks (4 tokens each here)."""
    from localllm.engine.request import Sequence

    core = engine(models["target"], f"draft:{models['target']}", num_kv_blocks=8).engine.core
    manager, proposer = core.block_manager, core.draft
    seq = Sequence("r", list(range(10, 16)), None)   # last token at position 5, blocks for positions 0 .. 7
    manager.allocate(seq, 6)
    # 6 free blocks, all kept for the 6 running sequences: no new block, k cut to positions 5 .. 7
    assert proposer._fit(seq, 4, headroom=6) == 3 and len(seq.block_table) == 2
    assert proposer._fit(seq, 4, headroom=5) == 4 and len(seq.block_table) == 3
    assert manager.num_free_blocks == 5
    drafts = proposer.propose([seq], [4], num_running=1)[0]
    assert len(drafts) == 4 and len(seq.block_table) == 3
