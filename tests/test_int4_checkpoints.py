"""AWQ and GPTQ int4 checkpoints: tiny random models written here in each format's packing (localllm.loader.int4
documents the layouts followed), run kept quantized on the CPU, give exactly the greedy tokens of the same model
with its weights dequantized by the format's own definition; what the loader refuses, it refuses in one line."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from localllm import LLM, SamplingParams
from localllm.errors import UnsupportedModelError
from localllm.hub.model_info import describe
from tiny_models import BLOCK128_CONFIGS, LINEARS, build_model_dir

GROUP = 128
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]   # AutoAWQ's WQLinear_GEMM: nibble i of a word holds output 8c + order[i]
GREEDY = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=16)
ENGINE = dict(block_size=4, num_kv_blocks=64, max_num_batched_tokens=16, num_threads=1)


def _words(nibbles: np.ndarray) -> torch.Tensor:
    """[..., 8] values 0..15 -> int32 [...] words, nibble i at bits 4i."""
    words = (nibbles.astype(np.uint64) << (4 * np.arange(8, dtype=np.uint64))).sum(-1).astype(np.uint32)
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int32))


def _int4(weight: torch.Tensor, seed: int):
    """Random int4 codes, zero points and float16 scales for an [N, K] weight, and its dequantized value."""
    n, k = weight.shape
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (n, k))
    zeros = rng.integers(1, 16, (n, k // GROUP))             # GPTQ's original format cannot store a zero of 0
    scales = torch.from_numpy(rng.uniform(0.01, 0.05, (n, k // GROUP))).to(torch.float16)
    dense = (torch.from_numpy(q - np.repeat(zeros, GROUP, axis=1)).float()
             * scales.float().repeat_interleave(GROUP, dim=1))
    return q, zeros, scales, dense


def _awq(q, zeros, scales) -> dict:
    n = q.shape[0]
    along_outputs = lambda a: _words(a.T.reshape(a.shape[1], n // 8, 8)[..., AWQ_ORDER])  # noqa: E731
    return {"qweight": along_outputs(q), "qzeros": along_outputs(zeros), "scales": scales.T.contiguous()}


def _gptq(q, zeros, scales, g_idx=None) -> dict:
    n, k = q.shape
    return {"qweight": _words(q.T.reshape(k // 8, 8, n).transpose(0, 2, 1)),
            "qzeros": _words((zeros - 1).T.reshape(k // GROUP, n // 8, 8)),
            "scales": scales.T.contiguous(),
            "g_idx": torch.arange(k, dtype=torch.int32) // GROUP if g_idx is None else g_idx}


def _write(tmp_path, method: str, pack, quantization_config: dict):
    """(quantized checkpoint dir, the same model dense with the dequantized weights)."""
    base = build_model_dir("llama", tmp_path / "base", configs=BLOCK128_CONFIGS)
    weights = load_file(str(base / "model.safetensors"))
    quantized, dense = {}, dict(weights)
    for i, (name, w) in enumerate(sorted(weights.items())):
        if name.rsplit(".", 2)[-2] in LINEARS:
            q, zeros, scales, dense[name] = _int4(w, i)
            prefix = name.removesuffix(".weight")
            quantized.update({f"{prefix}.{part}": t for part, t in pack(q, zeros, scales).items()})
        else:
            quantized[name] = w
    dirs = []
    for kind, tensors, extra in ((method, quantized, {"quantization_config": quantization_config}),
                                 ("dense", dense, {})):
        out = tmp_path / kind
        out.mkdir()
        for file in base.iterdir():
            if file.suffix != ".safetensors":
                (out / file.name).write_bytes(file.read_bytes())
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, **extra}))
        save_file(tensors, str(out / "model.safetensors"))
        dirs.append(out)
    return dirs


AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
GPTQ_CONFIG = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": False,
               "checkpoint_format": "gptq"}


def _tokens(model_dir, **kwargs) -> list[list[int]]:
    rng = random.Random(0)
    prompts = [[rng.randrange(300) for _ in range(n)] for n in (7, 12)]
    with LLM(str(model_dir), **ENGINE, **kwargs) as llm:
        runner = llm.engine.core.runner
        tokens = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]
        return tokens, runner


@pytest.mark.parametrize("method,pack,config", [("awq", _awq, AWQ_CONFIG), ("gptq", _gptq, GPTQ_CONFIG)])
def test_int4_checkpoint_kept_quantized_matches_its_dequantized_weights(tmp_path, method, pack, config):
    quantized_dir, dense_dir = _write(tmp_path, method, pack, config)
    want, _ = _tokens(dense_dir)
    got, runner = _tokens(quantized_dir, quantization="native")
    assert got == want
    assert runner.quantization == f"{method.upper()}-int4"
    layers = runner.model.model.layers
    assert layers[0].mlp.down_proj.layout.formats == ["int4_g128"]
    assert layers[1].self_attn.qkv_proj.weight.dtype == torch.uint8
    assert runner.model.lm_head.weight.dtype == torch.float32     # AWQ/GPTQ leave the LM head dense
    auto, dense_runner = _tokens(quantized_dir)                     # auto on the CPU: dequantized at load
    assert auto == want and dense_runner.quantization == ""
    info = describe(quantized_dir)
    assert info["format"] == f"{method.upper()}-int4"
    assert info["gpu_weight_bytes"] == _tokens(quantized_dir, quantization="native", dtype="bfloat16")[1].weight_bytes


def test_gptq_act_order_is_refused(tmp_path):
    def act_order(q, zeros, scales):
        k = q.shape[1]
        return _gptq(q, zeros, scales, g_idx=torch.arange(k, dtype=torch.int32).flip(0) // GROUP)

    quantized_dir, _ = _write(tmp_path, "gptq", act_order, {**GPTQ_CONFIG, "desc_act": True})
    with pytest.raises(UnsupportedModelError, match="act-order"):
        _tokens(quantized_dir, quantization="native")


@pytest.mark.parametrize("change,message", [({"bits": 8}, "8 bits and group size 128 is not supported"),
                                            ({"group_size": 64}, "group size 64 is not supported"),
                                            ({"quant_method": "bitsandbytes"}, "'bitsandbytes' is not supported"),
                                            ({"quant_method": "compressed-tensors", "config_groups": {"g": {
                                                "weights": {"num_bits": 4, "type": "int"}}}},
                                             "4-bit int are not supported")])
def test_other_schemes_are_refused(tmp_path, change, message):
    quantized_dir, _ = _write(tmp_path, "awq", _awq, {**AWQ_CONFIG, **change})
    with pytest.raises(UnsupportedModelError, match=message):
        _tokens(quantized_dir, quantization="native")
