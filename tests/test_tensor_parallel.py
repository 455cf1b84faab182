"""Tensor parallelism over 2 ranks with gloo on CPU: greedy output identical to one rank (fp32) through the offline
API under chunked prefill, preemption and prefix-cache hits, with overlapped steps; each rank's shard is the right
slice of the checkpoint; degrees that cannot split the model are refused in one line."""
from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from localllm import LLM, SamplingParams
from localllm.engine.tp_degree import GiB, ModelSize, TensorParallelError, check_degree, pick_degree
from localllm.layers.parallel import pretend_rank
from localllm.loader.safetensors import load_weights
from localllm.models import model_class
from tiny_models import TP_CONFIGS, build_model_dir

GREEDY = dict(temperature=0.0, ignore_eos=True)
# a pool and a token budget small enough that prompts are chunked and sequences preempted
ENGINE = dict(block_size=4, num_kv_blocks=14, max_num_batched_tokens=8, num_threads=1)


@pytest.fixture(scope="module", params=list(TP_CONFIGS))
def model_dir(request, tmp_path_factory):
    return build_model_dir(request.param, tmp_path_factory.mktemp(f"tp-{request.param}"), configs=TP_CONFIGS)


def prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(300) for _ in range(n)] for n in lengths]


def run_workload(llm: LLM) -> list[list[int]]:
    """A mixed batch (chunked prefill beside decodes, preemption in a tiny pool), then the same prompts again
    (prefix-cache hits); returns every completion's tokens."""
    first = prompts(1, [10, 9, 13, 3])
    outs = llm.generate(first, SamplingParams(max_tokens=12, **GREEDY))
    outs += llm.generate(first[:2] + prompts(2, [6]), SamplingParams(max_tokens=7, **GREEDY))
    return [o.outputs[0].token_ids for o in outs]


def score_prompts(llm: LLM) -> list[list[tuple]]:
    """Prompt logprobs (their rows gathered over the ranks' vocabulary slices), of a prompt chunked over 3 steps
    beside a short one: per prompt token, its id, its logprob and its top two."""
    outs = llm.generate(prompts(3, [19, 5]), SamplingParams(max_tokens=2, prompt_logprobs=2, **GREEDY))
    return [[(e.token_id, e.logprob, e.top_logprobs) for e in o.prompt_logprobs[1:]] for o in outs]


def test_two_ranks_match_one(model_dir):
    one_rank = LLM(str(model_dir), **ENGINE)
    expected, expected_scores = run_workload(one_rank), score_prompts(one_rank)
    with LLM(str(model_dir), tensor_parallel_size=2, overlap_steps=True, **ENGINE) as llm:
        core = llm.engine.core
        assert core.tensor_parallel_size == 2 and len(core.worker_pids) == 1
        assert run_workload(llm) == expected
        scores = score_prompts(llm)
        assert [len(s) for s in scores] == [18, 4]
        for got, want in zip(scores, expected_scores):
            assert [(t, [i for i, _ in top]) for t, _, top in got] == [(t, [i for i, _ in top]) for t, _, top in want]
            assert [lp for _, lp, _ in got] == pytest.approx([lp for _, lp, _ in want], abs=1e-4)
        assert core.scheduler.num_preemptions > 0
        assert core.block_manager.stats.hits > 0
        assert core.block_manager.num_free_blocks == len(core.block_manager.blocks)
        worker = core.tp.workers.processes[0]
    assert worker.poll() == 0   # stopped by the stop command, not killed


def _expected_shard(name: str, full: torch.Tensor, cfg, rank: int, tp: int) -> torch.Tensor:
    """The slice of a checkpoint tensor that rank `rank` of `tp` should hold, written out independently."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if "embed_tokens" in name or "lm_head" in name:
        per = -(-cfg.vocab_size // tp)
        part = full[rank * per:(rank + 1) * per]
        return torch.cat([part, part.new_zeros(per - part.shape[0], *part.shape[1:])])
    if any(p in name for p in ("q_proj", "gate_proj", "up_proj")):
        return full.chunk(tp, 0)[rank]
    if "k_proj" in name or "v_proj" in name:
        kv = cfg.num_key_value_heads
        group = rank if kv >= tp else rank * kv // tp
        per = max(1, kv // tp) * head_dim
        return full[group * per:(group + 1) * per]
    if ("o_proj" in name or "down_proj" in name) and full.dim() == 2:
        return full.chunk(tp, 1)[rank]
    return full


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_holds_its_slice(model_dir, rank):
    full = load_file(str(model_dir / "model.safetensors"))
    from localllm.loader.hf_dir import load_hf_config

    cfg = load_hf_config(model_dir)
    with pretend_rank(rank, 2):
        model = model_class(cfg)(cfg)
        load_weights(model, model_dir)
    params = dict(model.named_parameters())
    q = cfg.num_attention_heads // 2 * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    for name, tensor in full.items():
        layer = name.rsplit(".", 2)[0]
        expected = _expected_shard(name, tensor, cfg, rank, 2)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            got = params[f"{layer}.qkv_proj.{name.rsplit('.', 1)[1]}"][:q]
        elif any(f".{p}." in name for p in ("k_proj", "v_proj")):
            qkv = params[f"{layer}.qkv_proj.{name.rsplit('.', 1)[1]}"]
            kv = expected.shape[0]
            got = qkv[q:q + kv] if ".k_proj." in name else qkv[q + kv:q + 2 * kv]
        elif ".gate_proj." in name or ".up_proj." in name:
            gate_up = params[f"{layer}.gate_up_proj.weight"]
            half = gate_up.shape[0] // 2
            got = gate_up[:half] if ".gate_proj." in name else gate_up[half:]
        else:
            got = params[name]
        assert torch.equal(got, expected), name


SIZE_8B = ModelSize(num_heads=32, num_kv_heads=8, weight_bytes=16 * GiB, kv_bytes_per_token=128 << 10,
                    context_len=8192)


def test_degree_picker():
    # 16 GiB of weights + 2 contexts of 1 GiB KV: one 80 GiB GPU is enough; on 12 GiB GPUs it takes two halves
    assert pick_degree(SIZE_8B, [80 * GiB, 80 * GiB]) == 1
    assert pick_degree(SIZE_8B, [12 * GiB, 12 * GiB]) == 2
    assert pick_degree(SIZE_8B, []) == 1
    # 3 would not divide 32 heads: 4 is next
    assert pick_degree(SIZE_8B, [6 * GiB] * 4) == 4
    # one rank needs 18 GiB (more than GPU 0 has), two need 9 GiB each (more than GPU 1 has)
    with pytest.raises(TensorParallelError, match=r"^not enough free memory on GPU 1: 2\.0 GiB free, but a 1/2 "
                                                  r"shard needs 9\.0 GiB"):
        pick_degree(SIZE_8B, [10 * GiB, 2 * GiB])


@pytest.mark.parametrize("tp, free, message", [
    (3, [80 * GiB] * 4, "tensor_parallel_size 3 does not divide the model's 32 attention heads"),
    (64, [80 * GiB] * 64, "tensor_parallel_size 64 does not divide the model's 32 attention heads"),
    (4, [80 * GiB] * 2, "tensor_parallel_size 4 needs 4 GPUs, but 2 are visible"),
    (2, [80 * GiB, 1 * GiB], "not enough free memory on GPU 1: 1.0 GiB free"),
])
def test_degree_errors(tp, free, message):
    with pytest.raises(TensorParallelError) as e:
        check_degree(SIZE_8B, tp, free)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_refused_degree_names_the_degrees_that_split_the_heads():
    with pytest.raises(TensorParallelError) as e:
        check_degree(SIZE_8B, 3, [80 * GiB] * 4)
    assert str(e.value).endswith("attention heads (it can be split over 1, 2, 4, 8 GPUs)")
    # the embedded SmolLM2-135M: 9 heads over 3 KV heads
    size = ModelSize(num_heads=9, num_kv_heads=3, weight_bytes=GiB, kv_bytes_per_token=1024, context_len=128)
    with pytest.raises(TensorParallelError, match=r"9 attention heads \(it can be split over 1, 3 GPUs\)$"):
        check_degree(size, 2, [80 * GiB] * 2)


def test_kv_heads_fewer_than_ranks_must_divide_them():
    size = ModelSize(num_heads=12, num_kv_heads=2, weight_bytes=GiB, kv_bytes_per_token=1024, context_len=128)
    with pytest.raises(TensorParallelError, match="is not a multiple of the model's 2 key/value heads"):
        check_degree(size, 3, [80 * GiB] * 4)
    check_degree(size, 4, [80 * GiB] * 4)   # each KV head on two ranks


def test_a_degree_that_does_not_divide_the_heads_is_refused_before_any_worker_starts(model_dir):
    from localllm.loader.hf_dir import load_hf_config

    heads = load_hf_config(model_dir).num_attention_heads
    with pytest.raises(TensorParallelError, match=f"^tensor_parallel_size 5 does not divide the model's {heads} "):
        LLM(str(model_dir), tensor_parallel_size=5, **ENGINE)


@pytest.mark.parametrize("kind", ["fused", "symm_mem"])
def test_an_all_reduce_of_gpus_alone_is_refused_in_one_line_on_the_cpu(tmp_path_factory, kind):
    model_dir = build_model_dir("llama", tmp_path_factory.mktemp("tp-refused"), configs=TP_CONFIGS)
    with pytest.raises(ValueError, match=f"^the {kind} all-reduce is not available: it needs CUDA GPUs$"):
        LLM(str(model_dir), tensor_parallel_size=2, tp_allreduce=kind, **ENGINE)


def test_symm_mem_takes_one_shot_for_small_messages_two_shot_for_a_full_batchs_and_nccl_past_its_buffer():
    from localllm.layers.allreduce import symm_mem_path

    buffer, hidden = 10 << 20, 4096 * 2   # the default buffer; one row of the 8B model in bf16
    assert symm_mem_path(hidden, buffer, two_shot=True) == "one_shot"          # batch 1
    assert symm_mem_path(32 * hidden, buffer, two_shot=True) == "one_shot"     # 256 KiB
    assert symm_mem_path(33 * hidden, buffer, two_shot=True) == "two_shot"
    assert symm_mem_path(256 * hidden, buffer, two_shot=True) == "two_shot"    # a full batch: 2 MiB
    assert symm_mem_path(2048 * hidden, buffer, two_shot=True) == "group"      # a 2,048-token prefill chunk
    assert symm_mem_path(256 * hidden, buffer, two_shot=False) == "group"      # a torch without two-shot
    assert symm_mem_path(256 * hidden, 1 << 20, two_shot=True) == "group"      # past a smaller buffer
    assert symm_mem_path(4096 + 2, buffer, two_shot=True) == "group"           # not whole 16-byte vectors


def test_gated_mlp_reads_the_stream_not_a_pending_sum():
    """At one token with the ranks' partial sums pushed to each other (layers/peer_exchange), the MLP's hidden is a
    PendingSum, which has no rows: gated_mlp decides where SwiGLU runs from the residual stream, and its norm then
    adds the sum (a stand-in here that only records what it was given)."""
    from localllm.kernels.activation_ref import silu_and_mul_ref
    from localllm.layers.activation import SiluAndMul
    from localllm.layers.linear import MergedColumnParallelLinear, RowParallelLinear, gated_mlp
    from localllm.layers.peer_exchange import PendingSum

    torch.manual_seed(0)
    gate_up, down = MergedColumnParallelLinear(8, [6, 6]), RowParallelLinear(6, 8)
    for layer in (gate_up, down):
        layer.weight.data = torch.randn_like(layer.weight)
    residual, given = torch.randn(1, 8), []

    def norm(hidden, stream):
        given.append(hidden)
        return stream * 2, stream

    pending = PendingSum(site=None, programs=0)
    out, stream = gated_mlp(gate_up, down, SiluAndMul(), norm, pending, residual)
    assert given == [pending] and stream is residual
    assert torch.allclose(out, silu_and_mul_ref((residual * 2) @ gate_up.weight.t()) @ down.weight.t())


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen3-0.6b"])
def test_a_rank_share_alone_has_the_shapes_of_a_ranks_shard(name, monkeypatch):
    """scripts/gpu_tp_rank_share.py (a rank's compute timed alone on one GPU) builds, at one rank, exactly the
    parameter shapes that rank 1 of 2 holds of the whole model."""
    from pathlib import Path

    from localllm.bench import models
    from localllm.engine.model_builder import build_model

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    from gpu_tp_rank_share import rank_share

    meta, bf16 = torch.device("meta"), torch.bfloat16
    with pretend_rank(1, 2):
        shard, _ = build_model(models.random_weight_config(name), None, "none", meta, bf16, device_type="cuda")
    alone, _ = build_model(rank_share(2)(name), None, "none", meta, bf16, device_type="cuda")
    shapes = {n: p.shape for n, p in shard.named_parameters()}
    assert {n: p.shape for n, p in alone.named_parameters()} == shapes
    assert len(shapes) > 100   # every layer's
