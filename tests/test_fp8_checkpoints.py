"""FP8 (e4m3) checkpoints: tiny random models written here with 128x128-tile scales (transformers' fine-grained FP8),
per-channel and per-tensor scales (compressed-tensors), run kept quantized on the CPU, give exactly the greedy tokens
of the same model with its weights dequantized (fp8 * scale); `--quantize fp8` at load gives the tokens of its
round trip. localllm.loader.fp8 documents the layouts followed."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from localllm import LLM, SamplingParams
from localllm.hub.model_info import describe
from localllm.kernels.quant_blocks_ref import dequantize_ref
from localllm.kernels.quantize_ref import quantize_ref
from tiny_models import BLOCK128_CONFIGS, LINEARS, build_model_dir

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=16)
ENGINE = dict(block_size=4, num_kv_blocks=64, max_num_batched_tokens=16, num_threads=1)
# k/v have 64 rows, less than one 128-row tile
FINE_GRAINED = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
COMPRESSED = {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"group_0": {
    "targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"}}},
    "ignore": ["lm_head"]}


def _tiles(w: torch.Tensor):
    """128x128-tile scales: fp8 [N, K], scale_inv [ceil(N/128), K/128], and the dequantized weight."""
    n, k = w.shape
    rows = -(-n // 128)
    padded = torch.zeros(rows * 128, k).index_copy_(0, torch.arange(n), w)
    scale = padded.reshape(rows, 128, k // 128, 128).abs().amax((1, 3)) / 448
    expanded = scale.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)
    fp8 = (w / expanded).to(torch.float8_e4m3fn)
    return {"weight": fp8, "weight_scale_inv": scale}, fp8.float() * expanded


def _channels(w: torch.Tensor):
    scale = w.abs().amax(1, keepdim=True) / 448
    fp8 = (w / scale).to(torch.float8_e4m3fn)
    return {"weight": fp8, "weight_scale": scale, "input_scale": torch.tensor([0.5])}, fp8.float() * scale


def _tensor(w: torch.Tensor):
    scale = w.abs().amax() / 448
    fp8 = (w / scale).to(torch.float8_e4m3fn)
    return {"weight": fp8, "weight_scale": scale.reshape(())}, fp8.float() * scale


def _copy_dir(base, out, config_extra: dict, tensors: dict):
    out.mkdir()
    for file in base.iterdir():
        if file.suffix != ".safetensors":
            (out / file.name).write_bytes(file.read_bytes())
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **config_extra}))
    save_file(tensors, str(out / "model.safetensors"))
    return out


def _write(tmp_path, quantize, quantization_config: dict):
    """(FP8 checkpoint dir, the same model dense with the dequantized weights)."""
    base = build_model_dir("llama", tmp_path / "base", configs=BLOCK128_CONFIGS)
    weights = load_file(str(base / "model.safetensors"))
    quantized, dense = {}, dict(weights)
    for name, w in weights.items():
        if name.rsplit(".", 2)[-2] in LINEARS:
            parts, dense[name] = quantize(w)
            quantized.update({f"{name.removesuffix('.weight')}.{p}": t for p, t in parts.items()})
        else:
            quantized[name] = w
    return (_copy_dir(base, tmp_path / "fp8", {"quantization_config": quantization_config}, quantized),
            _copy_dir(base, tmp_path / "dense", {}, dense))


def _tokens(model_dir, **kwargs):
    rng = random.Random(1)
    prompts = [[rng.randrange(300) for _ in range(n)] for n in (6, 11)]
    with LLM(str(model_dir), **ENGINE, **kwargs) as llm:
        return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)], llm.engine.core.runner


@pytest.mark.parametrize("quantize,config", [(_tiles, FINE_GRAINED), (_channels, COMPRESSED),
                                             (_tensor, COMPRESSED)], ids=["tiles", "channels", "tensor"])
def test_fp8_checkpoint_kept_quantized_matches_its_dequantized_weights(tmp_path, quantize, config):
    fp8_dir, dense_dir = _write(tmp_path, quantize, config)
    want, _ = _tokens(dense_dir)
    got, runner = _tokens(fp8_dir, quantization="native")
    assert got == want
    assert runner.quantization == "FP8"
    assert runner.model.model.layers[0].self_attn.qkv_proj.layout.formats == ["fp8_e4m3_g128"]
    assert runner.model.lm_head.layout is None                # the checkpoint's LM head is dense
    assert _tokens(fp8_dir)[0] == want                        # auto on the CPU: dequantized at load
    info = describe(fp8_dir)
    assert info["format"] == "FP8"
    assert info["gpu_weight_bytes"] == _tokens(fp8_dir, quantization="native", dtype="bfloat16")[1].weight_bytes


def test_quantize_fp8_at_load_runs_its_round_trip(tmp_path):
    base = build_model_dir("llama", tmp_path / "base", configs=BLOCK128_CONFIGS)
    weights = load_file(str(base / "model.safetensors"))
    round_trip = {name: dequantize_ref(quantize_ref(w, "fp8_e4m3_g128"), "fp8_e4m3_g128")
                  if name.rsplit(".", 2)[-2] in LINEARS else w for name, w in weights.items()}
    reference = _copy_dir(base, tmp_path / "round-trip", {}, round_trip)
    want, _ = _tokens(reference)
    got, runner = _tokens(base, quantization="fp8")
    assert got == want and runner.quantization == "FP8"
    assert runner.model.model.embed_tokens.weight.dtype == torch.float32   # embedding and LM head stay dense
