"""The compiled CPU kernels (localllm.cpu_kernels) against the plain-torch references: block decoders bit for bit,
the matmul to its int16 rounding of x, the per-layer operations to float32 rounding; the one-call decode step
token for token against the module path; and the fallback when no compiler is there."""
from __future__ import annotations

import ctypes
import logging

import pytest
import torch

from localllm.cpu_kernels import build, ops
from localllm.kernels import paged_attention_ref as ref
from localllm.kernels.activation_ref import silu_and_mul_ref
from localllm.kernels.quant_blocks_ref import dequantize_ref
from localllm.kernels.quantize_ref import quantize_ref
from localllm.kernels.rmsnorm_ref import rms_norm_ref
from localllm.kernels.rotary_ref import rotate_ref
from localllm.layers.cpu_parts import CompiledPart, CpuQuantMatmul, DensePart
from localllm.layers.quantized import BlockLayout

FORMATS = list(ops.FORMATS)


def _has_compiler() -> None:
    if build.system_compiler() is None:
        pytest.skip("no C compiler (cc, gcc or clang) on this machine: the engine runs torch's CPU path")


@pytest.fixture
def lib(monkeypatch):
    """The kernels, built into the session's data dir (conftest) on first use."""
    _has_compiler()
    monkeypatch.setenv("LOCALLLM_CPU_KERNELS", "1")
    return build.library()


@pytest.fixture(params=["native", "avx2"])
def each_build(request, lib):
    """The kernels as this CPU builds them, then (on a CPU with AVX-512) built without AVX-512, so that both the
    AVX-512 kernels and the AVX2 ones are tested here."""
    if request.param == "native":
        return lib
    if "avx512f" not in build.cpu_flags().split():
        pytest.skip("this CPU has no AVX-512: the native build is the AVX2 one")
    return ops.declare(ctypes.CDLL(str(build.build(extra_flags=("-mno-avx512f",)))))


def _random_blocks(fmt: str, rows: int, cols: int, seed: int) -> torch.Tensor:
    """Block rows with random quants and random finite float16 scales (subnormals and zeros among them)."""
    g = torch.Generator().manual_seed(seed)
    blocks = quantize_ref(torch.randn(rows, cols, generator=g), fmt).view(rows, cols // 32, -1)
    scales = 2 if fmt == "Q4_1" else 1
    raw = torch.randint(0, 1 << 15, (rows, cols // 32, scales), generator=g, dtype=torch.int32)
    raw[(raw & 0x7C00) == 0x7C00] &= 0x3FFF          # no inf / nan exponents
    raw[:, :2] &= 0x83FF                           # subnormals and signed zeros
    blocks[:, :, :2 * scales] = raw.to(torch.int16).view(torch.uint8).reshape(rows, cols // 32, 2 * scales)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_is_the_references_bit_for_bit(lib, fmt):
    blocks = _random_blocks(fmt, 37, 96, seed=1)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert torch.equal(ops.dequantize(lib, blocks, fmt, 96), dequantize_ref(blocks, fmt))


def _rounded_to_int16(x: torch.Tensor) -> torch.Tensor:
    """x as the kernel multiplies it: each block of 32 values times 32767 / max|x| (float32, as the kernel computes
    it), rounded to nearest even, times max|x| / 32767."""
    blocks = x.view(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    return (torch.round(blocks * (32767 / amax)).double() * (amax.double() / 32767)).view_as(x)


def _matmuls_within_rounding(lib, x: torch.Tensor, blocks: torch.Tensor, fmt: str) -> list[torch.Tensor]:
    """ops.matmul on 1 and 2 threads, into columns of a wider output: its products equal the dequantized weights
    times x rounded to int16 per 32 values to float32 rounding, are within 2e-4 of the exact ones, and leave the
    other columns alone. The results (float64), one a thread count."""
    rows = blocks.shape[0]
    weights = dequantize_ref(blocks, fmt).double()
    exact, rounded = x.double() @ weights.T, _rounded_to_int16(x) @ weights.T
    results = []
    for threads in (1, 2):
        wide = torch.full((x.shape[0], rows + 5), float("nan"))
        torch.set_num_threads(threads)
        ops.matmul(lib, x, blocks, fmt, wide[:, 3:3 + rows])
        got = wide[:, 3:3 + rows].double()
        assert float((got - rounded).norm() / rounded.norm()) < 1e-5   # float32 sums; unrounded x: ~3e-5
        assert float((got - exact).norm() / exact.norm()) < 2e-4
        assert wide[:, :3].isnan().all() and wide[:, 3 + rows:].isnan().all()
        results.append(got)
    return results


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m", [1, 3, 6, 8, 19])
def test_matmul_matches_dequantize_then_matmul(each_build, fmt, m):
    """x is rounded to int16 per 32 values inside the kernel: the products equal the dequantized
    weights times that rounded x to float32 rounding, and are within 2e-4 of the exact ones. 70 rows: the 4-row
    batch-1 kernel, its remainder rows, and chunks on two threads."""
    rows, cols = 70, 160
    blocks = quantize_ref(torch.randn(rows, cols), fmt)
    x = torch.randn(m, cols)
    _matmuls_within_rounding(each_build, x, blocks, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("rows", "cols", "m"), [(70, 160, 64), (70, 160, 131), (40, 1536, 131)])
def test_prefill_sized_matmul_runs_the_tiles_to_the_same_rounding(each_build, fmt, rows, cols, m):
    """From 64 rows of x the tiled kernel (quant_gemm.c) multiplies: the same int16 rounding of x, so the same
    bounds. 70 rows: two whole panels of 32 and a part of one; 131 rows of x: an odd one past the pairs; 1536 columns:
    x in three chunks."""
    if not ops.tiled_gemm(each_build):
        pytest.skip("the tiled kernel needs AVX2")
    blocks = _random_blocks(fmt, rows, cols, seed=rows + m)
    x = torch.randn(m, cols)
    for got in _matmuls_within_rounding(each_build, x, blocks, fmt):
        # row by row against the few-x kernel: the same sums added in another order
        few = torch.cat([ops.matmul(each_build, x[t:t + 8], blocks, fmt, torch.empty(min(8, m - t), rows))
                         for t in range(0, m, 8)]).double()
        assert float((got - few).abs().max() / few.abs().max()) < 1e-5


def test_a_layer_of_mixed_formats_multiplies_each_part_into_its_columns(lib):
    torch.manual_seed(0)
    spans = [(0, 32, "Q4_1"), (32, 16, "Q8_0"), (48, 8, "Q6_K")]
    layout = BlockLayout.of(56, 256, spans)
    weight = torch.zeros(layout.nbytes, dtype=torch.uint8)
    for part in layout.parts:
        layout.blocks(weight, part).copy_(quantize_ref(torch.randn(part.rows, 256), part.fmt))
    matmul = CpuQuantMatmul(layout, weight, lib)
    assert [type(p) for p, _, _ in matmul.parts] == [CompiledPart, CompiledPart, DensePart]
    for batch in (2, 20, 70):   # decode-sized x through the few-x kernel, a prefill-sized one through the tiles
        x = torch.randn(batch, 256)
        want = x @ layout.dequantize(weight).T
        assert float((matmul(x) - want).norm() / want.norm()) < 2e-4


def test_rms_norm_and_silu_mul_match_their_references(lib):
    x, residual, weight = torch.randn(3, 200), torch.randn(3, 200), torch.randn(200)
    torch.testing.assert_close(ops.rms_norm(lib, x, weight, 1e-5), rms_norm_ref(x, weight, 1e-5))
    for got, want in zip(ops.rms_norm(lib, x, weight, 1e-5, residual), rms_norm_ref(x, weight, 1e-5, residual)):
        torch.testing.assert_close(got, want)
    # gates up to a few hundred, where exp(-g) saturates either way; 52 values: 6 vectors of 8 and a scalar tail
    gate_up = torch.randn(3, 2 * 52) * torch.tensor([[1.0], [12.0], [90.0]])
    torch.testing.assert_close(ops.silu_mul(lib, gate_up), silu_and_mul_ref(gate_up))


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_rotary_store_and_decode_attention_match_the_references(lib, window, kv_dtype):
    """3 sequences of different lengths in a shuffled paged cache, 6 query heads over 2 KV heads; a float16 cache
    holds what store_kvcache rounds into it and is read back as those values."""
    torch.manual_seed(0)
    heads, kv_heads, dim, block_size, num_blocks = 6, 2, 16, 4, 12
    lens = [9, 1, 6]
    k_cache, v_cache = torch.randn(2, num_blocks, block_size, kv_heads, dim).to(kv_dtype).unbind(0)
    k_want, v_want = k_cache.clone(), v_cache.clone()
    tables = torch.randperm(num_blocks)[:9].reshape(3, 3)
    slots = torch.tensor([int(tables[b, (n - 1) // block_size]) * block_size + (n - 1) % block_size
                          for b, n in enumerate(lens)])
    qkv = torch.randn(3, (heads + 2 * kv_heads) * dim)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k, v = q.view(3, heads, dim), k.view(3, kv_heads, dim), v.view(3, kv_heads, dim)
    cos, sin = torch.randn(3, 1, dim), torch.randn(3, 1, dim)

    q_rot = ops.rope_store(lib, q, k, v, cos, sin, slots, k_cache, v_cache)
    q_want = rotate_ref(q, cos, sin)
    ref.store_kvcache(rotate_ref(k, cos, sin), v, k_want, v_want, slots)
    torch.testing.assert_close(q_rot, q_want)
    torch.testing.assert_close(k_cache, k_want, atol=0, rtol=1e-3)   # float16: a rotation's last bit may differ
    assert torch.equal(v_cache, v_want)

    context_lens = torch.tensor(lens)
    got = ops.decode_attention(lib, q_rot, k_cache, v_cache, tables, context_lens, 0.25, window)
    want = ref.decode_attention(q_want, k_cache.float(), v_cache.float(), tables, context_lens, 0.25, window)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kv_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("heads, kv_heads, dim", [(5, 1, 32), (8, 2, 64), (6, 2, 128), (12, 3, 16), (4, 4, 24)])
def test_decode_attention_over_every_head_grouping(each_build, heads, kv_heads, dim, kv_dtype):
    """Query heads a KV head serves: 5 (a pass of 4, then 1), 4, 3, 4 and 1; head sizes a multiple of 16 (the AVX2
    vector path), of 64 (AVX-512's: 16 keys a tile, so 37 keys are two whole tiles and part of one) and 24 (the
    scalar one), float16 and float32 caches, contexts of 1 to 37 keys over shuffled blocks."""
    torch.manual_seed(1)
    block_size, lens = 8, [37, 1, 16, 9]
    tables = torch.randperm(24)[:20].reshape(4, 5)
    k_cache, v_cache = torch.randn(2, 24, block_size, kv_heads, dim).to(kv_dtype).unbind(0)
    q = torch.randn(4, heads, dim)
    context_lens = torch.tensor(lens)
    got = ops.decode_attention(each_build, q, k_cache, v_cache, tables, context_lens, dim ** -0.5, None)
    want = ref.decode_attention(q, k_cache.float(), v_cache.float(), tables, context_lens, dim ** -0.5, None)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("window", [None, 600])
@pytest.mark.parametrize("heads, dim", [(3, 64), (2, 16)])
def test_long_contexts_of_few_kv_heads_are_cut_into_key_ranges(each_build, heads, dim, window):
    """Fewer (sequence, KV head) pairs than two a thread (two sequences of one KV head) and 512 or more visible
    keys: each pair's keys are cut into two ranges on two threads and their partial softmaxes merged, to the
    reference's result; the 1-key sequence beside the 700-key one leaves its second range empty."""
    kv_heads = 1
    torch.manual_seed(2)
    block_size, lens = 16, [700, 1]
    tables = torch.randperm(90)[:88].reshape(2, 44)
    k_cache, v_cache = torch.randn(2, 90, block_size, kv_heads, dim).half().unbind(0)
    q = torch.randn(2, heads, dim)
    context_lens = torch.tensor(lens)
    torch.set_num_threads(2)
    got = ops.decode_attention(each_build, q, k_cache, v_cache, tables, context_lens, dim ** -0.5, window)
    want = ref.decode_attention(q, k_cache.float(), v_cache.float(), tables, context_lens, dim ** -0.5, window)
    torch.testing.assert_close(got, want)


def test_the_one_call_decode_step_gives_the_module_paths_tokens(lib):
    """The embedded model, two prompts decoding together: the compiled step and the module tree (layer by layer
    through the same kernels, over the same float16 KV cache) pick the same 24 greedy tokens."""
    from localllm import LLM, SamplingParams
    from localllm.layers.cpu_decode import DecodeStep

    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = ["The tallest mountain in the world is", "def fibonacci(n):"]
    with LLM(quantization="fast", num_kv_blocks=64) as llm:
        model = llm.engine.core.runner.model
        assert isinstance(model.forward, DecodeStep)
        assert llm.engine.core.runner.kv_cache.dtype == (torch.float16 if ops.kv_half(lib) else torch.float32)
        fast = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        model.forward = model.forward.forward
        modules = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert fast == modules and len(fast[0]) == 24


def _pool_at_start_of(runner, buffer: torch.Tensor, num_blocks: int) -> None:
    """Gives the runner's layers a KV pool of num_blocks blocks that begins where `buffer` does."""
    from localllm.layers.attention import Attention

    shape = (2, runner.kv_cache.shape[1], num_blocks, *runner.kv_cache.shape[3:])
    runner.kv_cache = buffer[:buffer.new_empty(shape).numel()].view(shape)
    for i, layer in enumerate(m for m in runner.model.modules() if isinstance(m, Attention)):
        layer.k_cache, layer.v_cache = runner.kv_cache[0, i], runner.kv_cache[1, i]


def test_the_one_call_decode_step_follows_a_new_pool_that_starts_where_the_old_one_did(lib):
    """A pool of another size at the same address (as a new anonymous map often is) moves every layer but the
    first: the compiled step must point at the new layers, or it reads keys the prompt never wrote there."""
    from localllm import LLM, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    with LLM(quantization="fast", num_kv_blocks=64) as llm:
        runner, model = llm.engine.core.runner, llm.engine.core.runner.model
        buffer = torch.zeros(runner.kv_cache.numel() * 2, dtype=runner.kv_cache.dtype)
        _pool_at_start_of(runner, buffer, 64)
        first = llm.generate(["The tallest mountain in the world is"], params)[0].outputs[0].token_ids
        _pool_at_start_of(runner, buffer, 128)
        fast = llm.generate(["def fibonacci(n):"], params)[0].outputs[0].token_ids
        model.forward = model.forward.forward
        modules = llm.generate(["def fibonacci(n):"], params)[0].outputs[0].token_ids
    assert fast == modules and len(first) == 8


def test_a_model_quantized_at_load_to_q8_0_runs_the_compiled_kernels(lib):
    """`--quantize q8_0` on the CPU (how a safetensors model gets the compiled path): every matrix becomes Q8_0
    blocks that the C kernels multiply, a decode step is one call, and the embedded model still answers Paris."""
    from localllm import LLM, SamplingParams
    from localllm.layers.cpu_decode import DecodeStep

    with LLM(quantization="q8_0", num_kv_blocks=64) as llm:
        runner = llm.engine.core.runner
        assert runner.quantization == "Q8_0" and isinstance(runner.model.forward, DecodeStep)
        parts = runner.model.model.layers[0].mlp.gate_up_proj.cpu_matmul.parts
        assert [(type(p), p.fmt) for p, _, _ in parts] == [(CompiledPart, "Q8_0")]
        out = llm.chat([[{"role": "user", "content": "What is the capital of France?"}]],
                       SamplingParams(temperature=0.0, max_tokens=12))
    assert "Paris" in out[0].outputs[0].text


def test_without_a_compiler_the_kernels_are_off_after_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALLLM_CPU_KERNELS", "1")
    missing = str(tmp_path / "no-such-cc")
    with caplog.at_level(logging.WARNING, logger="localllm.cpu_kernels"):
        assert build.library(missing) is None
        assert build.library(missing) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "unavailable" in lines[0] and "torch's CPU path" in lines[0]
    assert not (tmp_path / "cache" / "cpu_kernels").exists() or not any((tmp_path / "cache" / "cpu_kernels").iterdir())


def test_turned_off_the_engine_keeps_torchs_path(monkeypatch):
    """LOCALLLM_CPU_KERNELS=0: `fast` runs torch's int4 kernel, layer by layer, and still answers."""
    from localllm import LLM, SamplingParams
    from localllm.layers.cpu_parts import Int4Part

    monkeypatch.setenv("LOCALLLM_CPU_KERNELS", "0")
    assert build.library() is None
    with LLM(quantization="fast", num_kv_blocks=64) as llm:
        model = llm.engine.core.runner.model
        qkv = model.model.layers[0].self_attn.qkv_proj
        assert [type(p) for p, _, _ in qkv.cpu_matmul.parts] == [Int4Part]
        assert "forward" not in vars(model) and model.model.norm.cpu_ops is None
        assert llm.engine.core.runner.kv_cache.dtype == torch.float32
        out = llm.generate(["The capital of France is"], SamplingParams(temperature=0.0, max_tokens=4))
        assert len(out[0].outputs[0].token_ids) == 4
