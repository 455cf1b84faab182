"""Whole models with quantized weights on the CPU, where each matmul dequantizes its blocks to exactly the values a
dense conversion holds: a GGUF kept quantized gives the same greedy tokens as the same file dequantized (float32,
and bfloat16), on one rank and split over two; a dense checkpoint quantized at load gives the tokens of its
quantize-dequantize round trip; the engine reports the bytes its weights really take."""
from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3Config

from localllm import LLM, SamplingParams
from localllm.cpu_kernels.build import system_compiler
from localllm.hub.model_info import describe
from localllm.kernels.quant_blocks_ref import dequantize_ref
from localllm.kernels.quantize_ref import quantize_ref
from tiny_models import QUANT_TOKENS, build_model_dir, write_quantized_gguf

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=16)
ENGINE = dict(block_size=4, num_kv_blocks=64, max_num_batched_tokens=16, num_threads=1)
NEEDS_CC = pytest.mark.skipif(system_compiler() is None, reason="no C compiler: the compiled CPU kernels are off")


def _prompts(seed: int = 0, vocab: int = len(QUANT_TOKENS)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in (9, 5, 14)]


def _q4_k_m_like(name: str) -> str:
    """Every format at once: the embedding Q8_0, the LM head Q6_K, q Q4_0, k Q4_1, v Q6_K, o Q5_K, gate and up
    Q4_K, down Q6_K."""
    if name == "output.weight":
        return "Q6_K"
    formats = {"token_embd": "Q8_0", "attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "Q6_K",
               "attn_output": "Q5_K", "ffn_down": "Q6_K"}
    return next((fmt for part, fmt in formats.items() if part in name), "Q4_K")


def _tokens(llm: LLM, prompts) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]


@pytest.fixture(scope="module")
def mixed_gguf(tmp_path_factory):
    # 512 / 1024 wide, so that two ranks each hold whole 256-weight blocks of o_proj's and down_proj's inputs
    return write_quantized_gguf(tmp_path_factory.mktemp("qmodel") / "mixed.gguf", _q4_k_m_like, hidden=512,
                                ffn=1024, tied=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gguf_kept_quantized_gives_the_tokens_of_its_dequantized_form(mixed_gguf, dtype):
    with LLM(str(mixed_gguf), quantization="none", dtype=dtype, **ENGINE) as dense:
        want = _tokens(dense, _prompts())
        dense_runner = dense.engine.core.runner
        assert dense_runner.quantization == ""   # run dense
    with LLM(str(mixed_gguf), quantization="native", dtype=dtype, **ENGINE) as kept:
        runner = kept.engine.core.runner
        assert _tokens(kept, _prompts()) == want
        assert runner.quantization == "Q4_K_M"
        qkv = runner.model.model.layers[0].self_attn.qkv_proj
        assert qkv.weight.dtype == torch.uint8 and qkv.layout.formats == ["Q4_0", "Q4_1", "Q6_K"]
        assert runner.model.lm_head.layout.formats == ["Q6_K"]
        assert runner.model.model.embed_tokens.layout.formats == ["Q8_0"]
        assert runner.model.model.norm.weight.dtype == getattr(torch, dtype)
        # the blocks take what the file's matrices take (4.5 to 8.5 bits a weight), the dense form 32 or 16
        bits_per_weight = 8 * runner.weight_bytes / (dense_runner.weight_bytes / getattr(torch, dtype).itemsize)
        assert 4.5 < bits_per_weight < 7
        if dtype == "bfloat16":   # what `show` says the weights take on a GPU, from the file's header
            assert describe(mixed_gguf)["gpu_weight_bytes"] == runner.weight_bytes
        assert runner.weight_bytes < 1.02 * mixed_gguf.stat().st_size


def test_auto_with_float32_asked_dequantizes_on_the_cpu(mixed_gguf):
    with LLM(str(mixed_gguf), dtype="float32", **ENGINE) as llm:
        assert llm.engine.core.runner.quantization == ""
        assert all(p.dtype == torch.float32 for p in llm.engine.core.runner.model.parameters())


@NEEDS_CC
def test_auto_runs_fast_on_the_cpu_with_the_compiled_kernels_else_dequantizes(mixed_gguf, monkeypatch):
    for switch, want in (("1", "fast"), ("0", "auto")):
        monkeypatch.setenv("LOCALLLM_CPU_KERNELS", switch)
        with LLM(str(mixed_gguf), **ENGINE) as llm:
            assert llm.engine.config.quantization == want
            assert (llm.engine.core.runner.quantization == "Q4_K_M") == (want == "fast")


@pytest.mark.parametrize("compiled", [pytest.param("1", marks=NEEDS_CC), "0"])
def test_fast_keeps_blocks_on_the_cpu_and_runs_the_cpu_kernels(mixed_gguf, monkeypatch, compiled):
    """fast on the CPU: Q4_0 / Q4_1 rows through the compiled kernels (else torch's int4 layout), other formats
    as float32 (else bfloat16) copies; each prompt's first greedy token is the exact path's (dequantize, then
    multiply in float32; a random model's later tokens meet near-ties that rounding may flip)."""
    monkeypatch.setenv("LOCALLLM_CPU_KERNELS", compiled)
    with LLM(str(mixed_gguf), quantization="native", **ENGINE) as exact:
        want = _tokens(exact, _prompts(2))
    with LLM(str(mixed_gguf), quantization="fast", **ENGINE) as llm:
        runner = llm.engine.core.runner
        assert runner.quantization == "Q4_K_M"
        qkv = runner.model.model.layers[0].self_attn.qkv_proj
        kernel = "CompiledPart" if compiled == "1" else "Int4Part"
        assert [type(p).__name__ for p, _, _ in qkv.cpu_matmul.parts] == [kernel, kernel, "DensePart"]
        got = _tokens(llm, _prompts(2))
    assert [t[0] for t in got] == [t[0] for t in want]


def test_two_ranks_kept_quantized_match_one(mixed_gguf):
    with LLM(str(mixed_gguf), quantization="native", **ENGINE) as one:
        want = _tokens(one, _prompts(1))
    with LLM(str(mixed_gguf), quantization="native", tensor_parallel_size=2, **ENGINE) as two:
        assert two.engine.core.tensor_parallel_size == 2
        o_proj = two.engine.core.runner.model.model.layers[1].self_attn.o_proj
        assert o_proj.layout.cols == 256 and o_proj.layout.formats == ["Q5_K"]
        assert _tokens(two, _prompts(1)) == want


def test_a_dense_checkpoint_quantized_at_load_runs_its_round_trip(tmp_path):
    """--quantize q8_0 on a float32 checkpoint: the tokens of the same checkpoint with every matrix replaced by
    dequantize(quantize(W)), the embedding and LM head included."""
    # every matrix of whole 32-weight rows (hidden 64, head_dim 32, intermediate 96)
    config = {"qwen3": lambda: Qwen3Config(
        vocab_size=307, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, tie_word_embeddings=False)}
    model_dir = build_model_dir("qwen3", tmp_path / "dense", configs=config)
    round_trip = tmp_path / "round-trip"
    round_trip.mkdir()
    for file in model_dir.iterdir():
        if file.suffix != ".safetensors":
            (round_trip / file.name).write_bytes(file.read_bytes())
    weights = load_file(str(model_dir / "model.safetensors"))
    save_file({name: dequantize_ref(quantize_ref(w, "Q8_0"), "Q8_0") if w.dim() == 2 else w
               for name, w in weights.items()}, str(round_trip / "model.safetensors"))
    prompts = _prompts(2, vocab=300)
    with LLM(str(round_trip), **ENGINE) as reference:
        want = _tokens(reference, prompts)
    with LLM(str(model_dir), quantization="q8_0", **ENGINE) as llm:
        runner = llm.engine.core.runner
        assert runner.quantization == "Q8_0"
        assert {f for m in runner.model.modules() if getattr(m, "layout", None) for f in m.layout.formats} == {"Q8_0"}
        assert _tokens(llm, prompts) == want


def test_auto_on_a_gpu_keeps_a_quantized_files_blocks_and_a_dense_one_dense(mixed_gguf, tmp_path, monkeypatch):
    """What `auto` means on a GPU is decided from the file's header (quant_choice): a quantized checkpoint runs as
    its blocks, whatever the GPU's size; a dense one stays dense. The device is the one thing stood in for, since
    this machine has no GPU."""
    from localllm.config import Config
    from localllm.engine import quant_choice

    dense_gguf = write_quantized_gguf(tmp_path / "dense.gguf", lambda name: "F32", file_type="ALL_F32")
    monkeypatch.setattr(quant_choice, "resolve_device", lambda config: torch.device("cuda", 0))

    def settled(path, **config) -> str:
        return quant_choice.settle_quantization(Config(**config), str(path)).quantization

    assert settled(mixed_gguf) == "native" and settled(mixed_gguf, tensor_parallel_size=2) == "native"
    # 4 ranks would get 128 of o_proj's 512 inputs, half a Q5_K block: dense, not the plan's refusal
    assert settled(mixed_gguf, tensor_parallel_size=4) == "none"
    assert settled(dense_gguf) == "none"
    assert settled(mixed_gguf, quantization="q8_0") == "q8_0" and settled(mixed_gguf, quantization="none") == "none"


def test_grown_kernel_workspaces_keep_the_buffers_graphs_were_captured_with():
    """A CUDA graph captured while a workspace was smaller writes into that buffer whenever it replays: growing
    the workspace must not free it (freed, its memory went to other tensors: a quantized SmolLM2 on a GPU then
    sampled token 0 from every step of four sequences)."""
    from localllm.kernels.quant_launch import SplitWorkspace
    from localllm.kernels.quant_matmul import _Scratch

    device = torch.device("cpu")
    partial, arrivals = SplitWorkspace.get(device, 16, 16)
    grown, _ = SplitWorkspace.get(device, partial.numel() + 1, 16)
    assert grown.numel() > partial.numel() and any(kept is partial for kept, _ in SplitWorkspace.retired)
    scratch = _Scratch.get(device, torch.float32, 8)
    bigger = _Scratch.get(device, torch.float32, scratch.numel() + 1)
    assert bigger.numel() > scratch.numel() and any(kept is scratch for kept in _Scratch.retired)
