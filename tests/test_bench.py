"""`localllm bench`: the roofline arithmetic checked by hand, and latency / throughput / sweep / grammar run through
the CLI on a tiny random-weight model with both backends, checking that the JSON's figures agree with each other."""
import json

import jsonschema_rs
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from localllm.bench.models import random_weight_config
from localllm.bench.roofline import ModelShape, decode_roofline, model_shape, percent, prefill_floor_s
from localllm.bench.workloads import nano_vllm_workload
from localllm.cli.main import app
from tiny_models import build_model_dir

runner = CliRunner()

# kv bytes per token = 2 (K and V) * 2 layers * 1 kv head * 4 head_dim * 2 bytes = 32
HAND_SHAPE = ModelShape(num_params=500, weight_bytes_per_step=1000, num_layers=2, num_kv_heads=1, head_dim=4,
                        kv_dtype_bytes=2)


def test_decode_roofline_by_hand():
    # sequence 1: prompt 10, 2 steps, contexts 11 + 12 = 23; sequence 2: prompt 20, 3 steps, 21 + 22 + 23 = 66
    # bytes = 3 steps * 1000 weight bytes + (23 + 66) context tokens * 32 = 5848; at 1,000 bytes/s: 5.848 s
    roofline = decode_roofline(HAND_SHAPE, 1e-6, [10, 20], [2, 3])
    assert HAND_SHAPE.kv_bytes_per_token == 32
    assert roofline.bytes_read == 5848
    assert roofline.output_tokens == 5
    assert roofline.seconds == pytest.approx(5.848)
    assert roofline.tokens_per_s == pytest.approx(5 / 5.848)


def test_prefill_floor_and_percent_by_hand():
    # 2 * 500 params * 100 tokens = 100,000 FLOPs at 1,000 FLOP/s (1e-9 TFLOP/s)
    assert prefill_floor_s(HAND_SHAPE, 100, 1e-9) == pytest.approx(100.0)
    assert percent(30.0, 120.0) == 25.0


def _meta_model(name: str):
    config = random_weight_config(name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16), config


def test_nano_vllm_roofline_of_qwen3_0_6b():
    """Tied embedding: read once per step as the LM head. On this workload's actual lengths (mean 523 output
    tokens, not the 562 of the distribution's mean) the bound at 3.0 TB/s is 5.04 s."""
    model, config = _meta_model("qwen3-0.6b")
    shape = model_shape(model, config, kv_dtype_bytes=2)
    assert shape.num_params == 596_049_920
    assert shape.weight_bytes_per_step == 2 * 596_049_920
    assert shape.kv_bytes_per_token == 2 * 28 * 8 * 128 * 2
    workload = nano_vllm_workload()
    roofline = decode_roofline(shape, 3000.0, [len(p) for p in workload.prompts], workload.max_tokens)
    assert roofline.output_tokens == 133_966
    assert roofline.seconds == pytest.approx(5.035, abs=0.001)


def test_untied_input_embedding_is_not_read_per_step():
    model, config = _meta_model("llama-3.1-8b")
    shape = model_shape(model, config, kv_dtype_bytes=2)
    assert shape.num_params == 8_030_261_248
    assert shape.weight_bytes_per_step == 2 * (8_030_261_248 - 128_256 * 4096)
    assert decode_roofline(shape, 3000.0, [128], [256]).tokens_per_s == pytest.approx(199.4, abs=0.1)


def test_random_q4_k_m_8b_is_the_size_of_llama_cpp_s_file():
    """--random-weights llama-3.1-8b --quantize q4_k_m draws llama.cpp's Q4_K_M mix (Q6_K for the LM head and for
    attn_v / ffn_down in its "more bits" layers): as a GGUF (norms in float32) its tensors take what the tensors of
    llama.cpp's Llama-3.1-8B-Instruct-Q4_K_M.gguf do (4,920,734,016 bytes with ~8 MB of metadata and vocabulary).
    On a GPU the blocks are repacked into planes, which take at most 3% more. The roofline counts the planes' bytes
    and the weights' true number."""
    from localllm.engine.model_builder import build_model
    from localllm.kernels.block_formats import row_bytes

    config = random_weight_config("llama-3.1-8b")
    model, _ = build_model(config, None, "q4_k_m", torch.device("meta"), torch.bfloat16, device_type="cuda")
    layouts = {id(m.weight): m.layout for m in model.modules() if getattr(m, "layout", None) is not None}
    blocks = sum(p.rows * row_bytes(p.fmt, layout.cols) for layout in layouts.values() for p in layout.parts)
    as_gguf = blocks + 4 * sum(p.numel() for p in model.parameters() if p.dtype != torch.uint8)
    assert 4_920_734_016 - 10_000_000 < as_gguf < 4_920_734_016
    planes = sum(p.numel() for p in model.parameters() if p.dtype == torch.uint8)
    assert all(layout.packed for layout in layouts.values()) and blocks < planes < 1.03 * blocks
    shape = model_shape(model, config, kv_dtype_bytes=2)
    embedding = model.model.embed_tokens
    assert embedding.layout.formats == ["Q4_K"] and model.lm_head.layout.formats == ["Q6_K"]
    assert shape.num_params == 8_030_261_248
    assert shape.weight_bytes_per_step == sum(p.numel() for p in model.parameters() if p.dtype == torch.uint8) \
        - embedding.weight.numel() + 2 * sum(p.numel() for p in model.parameters() if p.dtype != torch.uint8)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_model_dir("llama", tmp_path_factory.mktemp("bench") / "llama")


@pytest.fixture(scope="module")
def tiny_shape(tiny_dir):
    """The shape as transformers sees the model; ours must agree with it for the rooflines to match."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    return model_shape(model, model.config, kv_dtype_bytes=4)


def _bench(tmp_path, *args) -> dict:
    out = tmp_path / "result.json"
    result = runner.invoke(app, ["bench", *args, "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.mark.parametrize("backend", ["localllm", "hf"])
def test_latency(tmp_path, tiny_dir, tiny_shape, backend):
    r = _bench(tmp_path, "latency", "--model", str(tiny_dir), "--backend", backend, "--prompt-tokens", "16",
               "--new-tokens", "12", "--ttft-prompt-tokens", "48")
    assert (r["backend"], r["device"], r["dtype"]) == (backend, "cpu", "float32")
    for key in ("load_s", "ttft_ms", "decode_tokens_per_s", "copy_bandwidth_gb_s", "matmul_tflop_s"):
        assert r[key] > 0, key
    assert (r["ttft_prompt_tokens"], r["decode_prompt_tokens"], r["decode_tokens"]) == (48, 16, 12)
    roofline = decode_roofline(tiny_shape, r["copy_bandwidth_gb_s"], [16], [12])
    assert r["roofline_tokens_per_s"] == pytest.approx(roofline.tokens_per_s)
    assert r["percent_of_roofline"] == pytest.approx(100 * r["decode_tokens_per_s"] / r["roofline_tokens_per_s"])
    assert r["ttft_floor_ms"] == pytest.approx(1000 * prefill_floor_s(tiny_shape, 48, r["matmul_tflop_s"]))
    assert r["percent_of_ttft_floor"] == pytest.approx(100 * r["ttft_floor_ms"] / r["ttft_ms"])


def test_latency_of_a_checkpoint_quantized_at_load(tmp_path, tiny_dir):
    dense = _bench(tmp_path, "latency", "--model", str(tiny_dir), "--prompt-tokens", "8", "--new-tokens", "4",
                   "--ttft-prompt-tokens", "16", "--num-kv-blocks", "32")
    r = _bench(tmp_path, "latency", "--model", str(tiny_dir), "--prompt-tokens", "8", "--new-tokens", "4",
               "--ttft-prompt-tokens", "16", "--quantize", "q8_0", "--num-kv-blocks", "32")
    file_bytes = (tiny_dir / "model.safetensors").stat().st_size
    assert dense["memory"] == {"quantization": "", "weight_bytes": dense["memory"]["weight_bytes"],
                               "file_bytes": file_bytes, "peak_allocated_bytes": None, "peak_reserved_bytes": None}
    assert r["memory"]["quantization"] == "Q8_0" and r["memory"]["file_bytes"] == file_bytes
    # float32 on the CPU: Q8_0 blocks (8.5 bits) for the matrices whose rows are whole 32-weight blocks
    assert r["memory"]["weight_bytes"] < 0.6 * dense["memory"]["weight_bytes"]
    assert r["decode_tokens_per_s"] > 0


def test_throughput_compared_with_hf(tmp_path, tiny_dir, tiny_shape):
    r = _bench(tmp_path, "throughput", "--model", str(tiny_dir), "--streams", "3", "--prompt-tokens", "10",
               "--new-tokens", "6", "--compare-hf")
    assert (r["backend"], r["workload"], r["sequences"], r["prompt_tokens"]) == ("localllm", "streams", 3, 30)
    assert r["output_tokens"] == 18 and r["preemptions"] == 0
    assert r["output_tokens_per_s"] == pytest.approx(r["output_tokens"] / r["elapsed_s"])
    roofline = decode_roofline(tiny_shape, r["copy_bandwidth_gb_s"], [10] * 3, [6] * 3)
    assert r["roofline_s"] == pytest.approx(roofline.seconds)
    assert r["roofline_tokens_per_s"] == pytest.approx(18 / r["roofline_s"])
    assert r["percent_of_roofline"] == pytest.approx(100 * r["output_tokens_per_s"] / r["roofline_tokens_per_s"])
    assert r["hf_output_tokens_per_s"] > 0
    assert r["ratio_to_hf"] == pytest.approx(r["output_tokens_per_s"] / r["hf_output_tokens_per_s"])


def test_throughput_on_hf_continuous_batching(tmp_path, tiny_dir):
    r = _bench(tmp_path, "throughput", "--model", str(tiny_dir), "--backend", "hf", "--streams", "3",
               "--prompt-tokens", "10", "--new-tokens", "6")
    assert (r["backend"], r["output_tokens"], r["preemptions"]) == ("hf", 18, None)
    assert r["output_tokens_per_s"] > 0 and r["ratio_to_hf"] is None


def test_sweep(tmp_path, tiny_dir, tiny_shape):
    r = _bench(tmp_path, "sweep", "--model", str(tiny_dir), "--batch-sizes", "1,2", "--prompt-tokens", "12",
               "--new-tokens", "8")
    assert set(r) == {"model", "device", "dtype", "copy_bandwidth_gb_s", "points"}
    assert [p["batch_size"] for p in r["points"]] == [1, 2]
    for point in r["points"]:
        assert set(point) == {"batch_size", "decode_tokens_per_s", "roofline_tokens_per_s"}
        assert point["decode_tokens_per_s"] > 0
        b = point["batch_size"]
        expected = decode_roofline(tiny_shape, r["copy_bandwidth_gb_s"], [12] * b, [8] * b).tokens_per_s
        assert point["roofline_tokens_per_s"] == pytest.approx(expected)


def test_throughput_with_every_request_under_a_json_schema(tmp_path, tiny_dir):
    """The grammar never ends, so each guided stream still produces exactly its tokens."""
    r = _bench(tmp_path, "throughput", "--model", str(tiny_dir), "--streams", "3", "--prompt-tokens", "10",
               "--new-tokens", "6", "--json-schema")
    assert (r["workload"], r["output_tokens"]) == ("streams, JSON schema", 18)


def test_random_weights_take_the_tokenizer_of_the_model_named(tiny_dir):
    from localllm.bench.models import open_bench_model, with_a_tokenizer

    random = open_bench_model(None, "qwen3-0.6b")
    assert random.tokenizer_dir is None
    assert with_a_tokenizer(random, str(tiny_dir)).tokenizer_dir == tiny_dir


def test_grammar_mask_cost(tmp_path, tiny_dir):
    r = _bench(tmp_path, "grammar", "--model", str(tiny_dir), "--sequences", "2,5", "--steps", "12",
               "--device", "cpu")["results"]
    assert [(x["sequences"], x["steps"], x["device"], x["vocab_size"]) for x in r] == [(2, 12, "cpu", 331),
                                                                                        (5, 12, "cpu", 331)]
    for x in r:
        assert x["mask_ms"] > 0 and x["mask_p90_ms"] >= x["mask_ms"] and x["apply_ms"] > 0 and x["advance_ms"] > 0
        assert x["mask_per_sequence_us"] == pytest.approx(1000 * x["mask_ms"] / x["sequences"])
        # each step's host time is the sum of its phases, so its median is at least any phase's
        assert x["upload_ms"] > 0 and x["host_ms"] >= max(x["mask_ms"], x["apply_ms"], x["advance_ms"])


def test_the_grammar_documents_follow_the_schema():
    from localllm.bench.grammar import BENCH_SCHEMA, bench_documents

    validator = jsonschema_rs.validator_for(BENCH_SCHEMA)
    documents = bench_documents(50)
    assert len(set(documents)) == 50
    for document in documents:
        validator.validate(json.loads(document))


@pytest.mark.parametrize("args, message", [
    (["latency", "--backend", "vllm"], "unknown --backend 'vllm'"),
    (["throughput", "--random-weights", "gpt-5"], "unknown --random-weights architecture 'gpt-5'"),
    (["throughput", "--backend", "hf", "--compare-hf"], "--compare-hf compares localllm with hf"),
    (["sweep", "--batch-sizes", "1,two"], "--batch-sizes must be comma-separated integers"),
    (["latency", "--new-tokens", "1"], "--new-tokens must be at least 2"),
    (["throughput", "--backend", "hf", "--json-schema"], "--json-schema runs this engine only"),
    (["grammar", "--sequences", "0"], "--sequences must be positive"),
    (["latency", "--quantize", "q3_k"], "quantization must be one of"),
    (["latency", "--backend", "hf", "--quantize", "q8_0"], "--quantize applies to --backend localllm only"),
])
def test_bad_input_is_one_error_line(args, message):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {message}"), result.output
    assert "Traceback" not in result.output


def test_nano_vllm_workload_needs_a_large_vocabulary(tiny_dir):
    result = runner.invoke(app, ["bench", "throughput", "--model", str(tiny_dir), "--workload", "nano-vllm"])
    assert result.exit_code == 1
    assert "draws token ids up to 10,000; this model's vocabulary has 331" in result.stderr


def test_both_backends_sample_each_sequence_to_its_own_length(tiny_dir):
    """The nano-vllm workload's shape: sampled (temperature 0.6), a different length per sequence."""
    from localllm.bench.engine_backend import EngineBackend
    from localllm.bench.hf_backend import HFBackend
    from localllm.bench.models import open_bench_model
    from localllm.bench.workloads import Workload, random_prompts

    bench_model = open_bench_model(str(tiny_dir), None)
    workload = Workload("mixed", random_prompts(4, 20, 300, seed=5), [3, 9, 2, 6], temperature=0.6)
    engine = EngineBackend(bench_model, "float32", num_kv_blocks=64)
    hf = HFBackend(bench_model, torch.device("cpu"), torch.float32, max_batch_tokens=256)
    assert engine.shape == hf.shape
    assert engine.generate_all(workload).output_tokens == 20
    assert hf.generate_all(workload).output_tokens == 20
