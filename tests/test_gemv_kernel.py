"""The fused decode GEMV (kernels/gemv.py) against its plain-torch reference, under Triton's interpreter
(tests/triton_interpreter.py): every prologue and epilogue, row counts 1-8, shapes that are not multiples of the
tiles, float32 and bfloat16."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402

from localllm.kernels.gemv_ref import gemv_ref  # noqa: E402
from tiny_models import CONFIGS, build_model_dir, hf_greedy  # noqa: E402
from transformers import LlamaConfig  # noqa: E402


def test_gemv_kernel_under_triton_interpreter():
    """Runs the kernel tests of this file in a child process where Triton interprets."""
    run_under_interpreter(__file__)


def _case(m, n, k, dtype, *, silu_mul=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 2 * k if silu_mul else k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    norm = ((torch.rand(k, generator=g) + 0.5).to(dtype), 1e-5)
    residual = torch.randn(m, n, generator=g).to(dtype)
    return x, w, bias, norm, residual


# (1, 9, 1536): the tiles a real model's one token row takes (1,024 columns a step), the second step masked
@pytest.mark.parametrize("m,n,k", [(1, 40, 96), (3, 33, 70), (8, 64, 128), (1, 9, 1536)])
@pytest.mark.parametrize("variant", ["plain", "norm", "silu_mul", "bias_residual", "norm_bias_residual"])
def test_gemv_float32_matches_reference(m, n, k, variant):
    from localllm.kernels.gemv import gemv

    x, w, bias, norm, residual = _case(m, n, k, torch.float32, silu_mul=variant == "silu_mul")
    kwargs = {"norm": norm if "norm" in variant else None, "silu_mul": variant == "silu_mul",
              "residual": residual if "residual" in variant else None}
    b = bias if "bias" in variant else None
    torch.testing.assert_close(gemv(x, w, b, **kwargs), gemv_ref(x, w, b, **kwargs), atol=1e-5, rtol=1e-5)


def test_gemv_silu_mul_at_the_wide_tile_matches_reference():
    """The tile a one-row SiLU-and-mul launch of 4,096 rows or more takes (8 rows x 512 columns), on a small matrix:
    the last row tile and the last column step masked."""
    from localllm.kernels.gemv import gemv

    x, w, _, _, residual = _case(1, 20, 1200, torch.float32, silu_mul=True, seed=3)
    got = gemv(x, w, silu_mul=True, residual=residual, config=(1, 8, 512))
    torch.testing.assert_close(got, gemv_ref(x, w, silu_mul=True, residual=residual), atol=1e-5, rtol=1e-5)


def test_gemv_writes_into_its_residual_in_place():
    """A decoder layer keeps its residual stream in one buffer: out=residual adds the projection into it."""
    from localllm.kernels.gemv import gemv

    x, w, _, _, residual = _case(2, 48, 64, torch.float32, seed=1)
    want = gemv_ref(x, w, residual=residual)
    got = gemv(x, w, residual=residual, out=residual)
    assert got is residual
    torch.testing.assert_close(residual, want, atol=1e-5, rtol=1e-5)


def test_gemv_bfloat16_within_rounding_and_tiles_do_not_matter():
    from localllm.kernels.gemv import gemv

    x, w, bias, norm, residual = _case(4, 72, 200, torch.bfloat16, seed=2)
    want = gemv_ref(x, w, bias, norm=norm, residual=residual)
    for config in (None, (4, 4, 32), (4, 16, 64)):
        got = gemv(x, w, bias, norm=norm, residual=residual, config=config)
        torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=2e-2)


def test_gemv_config_keeps_products_in_registers():
    from localllm.kernels.gemv import PROLOGUE_NONE, PROLOGUE_RMS_NORM, PROLOGUE_SILU_MUL, gemv_config

    assert gemv_config(1, 28672, 4096) == (1, 8, 1024)
    assert gemv_config(1, 1024, 2048) == (1, 4, 1024)
    assert gemv_config(2, 6144, 4096) == (2, 4, 1024)
    assert gemv_config(8, 4096, 14336) == (8, 4, 256)
    assert gemv_config(3, 40, 96) == (4, 4, 128)
    # one row and 4,096 rows or more (a TP=2 rank's down and o of Llama-3.1-8B): SiLU-and-mul takes 8 rows x 512
    # columns; no prologue over 2,048 columns or fewer, 512 columns
    assert gemv_config(1, 4096, 7168, PROLOGUE_SILU_MUL) == (1, 8, 512)
    assert gemv_config(1, 4096, 2048, PROLOGUE_NONE) == (1, 4, 512)
    assert gemv_config(1, 4096, 4096, PROLOGUE_NONE) == (1, 4, 1024)           # the whole 8B's o
    assert gemv_config(1, 4096, 1024, PROLOGUE_RMS_NORM) == (1, 4, 1024)       # Qwen3-0.6B's qkv
    assert gemv_config(1, 1024, 3072, PROLOGUE_SILU_MUL) == (1, 4, 1024)
    assert gemv_config(1, 2048, 2048, PROLOGUE_NONE) == (1, 4, 1024)
    assert gemv_config(2, 4096, 7168, PROLOGUE_SILU_MUL) == (2, 4, 1024)


@pytest.mark.parametrize("silu_mul", [False, True])
def test_row_parallel_ranks_partials_sum_to_the_residual_plus_projection(silu_mul, monkeypatch):
    """Tensor parallelism over 2 ranks: rank 0 folds the residual and the bias into its fused partial product, so
    the all-reduce (the sum of what each rank leaves in the residual buffer) is residual + proj(x) + bias."""
    from localllm.layers import linear
    from localllm.layers.parallel import pretend_rank

    monkeypatch.setattr(linear, "all_reduce", lambda x: x)   # each rank's buffer is kept; the test sums them
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(24, 64, generator=g), torch.randn(24, generator=g)
    residual = torch.randn(1, 24, generator=g)
    gate, up = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
    full_x = torch.cat([gate, up], -1) if silu_mul else gate
    want = gemv_ref(full_x, weight, bias, silu_mul=silu_mul, residual=residual)
    total = torch.zeros_like(residual)
    for rank in (0, 1):
        part = slice(32 * rank, 32 * rank + 32)
        x = torch.cat([gate[:, part], up[:, part]], -1) if silu_mul else gate[:, part]
        with pretend_rank(rank, 2):
            layer = linear.RowParallelLinear(64, 24, bias=True)
            layer.load_weight(layer.weight, weight)
            layer.load_weight(layer.bias, bias)
            buffer = residual.clone()
            layer.add_into(x, buffer, silu_mul=silu_mul)
        total += buffer
    torch.testing.assert_close(total, want, atol=1e-5, rtol=1e-5)


BIASED_LLAMA = {"llama": lambda: LlamaConfig(
    vocab_size=331, hidden_size=64, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, attention_bias=True, mlp_bias=True)}


@pytest.mark.parametrize("arch", ["llama_with_biases", "qwen3"])
def test_decoder_layers_through_the_fused_gemv_keep_greedy_tokens(arch, tmp_path, monkeypatch):
    """Every one-token step of a tiny model through the fused projections (forced on for float32 on the CPU, so
    that Triton's interpreter runs them): norm prologues, SiLU-and-mul, the residual stream updated in place from
    the first layer to the final norm. Greedy tokens equal transformers'."""
    from localllm import LLM, SamplingParams
    from localllm.kernels import gemv
    from localllm.layers import linear

    configs, name = (BIASED_LLAMA, "llama") if arch == "llama_with_biases" else (CONFIGS, arch)
    model_dir = build_model_dir(name, tmp_path, configs=configs)
    calls = []
    monkeypatch.setattr(linear, "fuses_gemv",
                        lambda x, module, silu_mul=False: calls.append(x.shape[0]) or x.shape[0] == 1)
    # one program covers a tiny matrix: the interpreter's cost is per program
    monkeypatch.setattr(gemv, "gemv_config", lambda m, n, k, prologue=0: (1, triton.next_power_of_2(n), 128))
    prompt = [5, 17, 42, 99, 7]
    llm = LLM(str(model_dir), overlap_steps=False, block_size=4, num_kv_blocks=32)
    out = llm.generate([prompt], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert out[0].outputs[0].token_ids == hf_greedy(model_dir, prompt, 6)
    assert calls.count(1) >= 5 * 4 * 2   # decode steps went through every projection of every layer


collect_one_mode(globals(), "test_gemv_kernel_under_triton_interpreter")
