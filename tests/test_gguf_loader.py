"""GGUF → Hugging Face directory conversion, the model-name resolver and the embedded default model."""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from localllm.errors import CorruptModelError, ModelNotFoundError, UnsupportedModelError
from localllm.hub.embedded import embedded_gguf_path
from localllm.loader.gguf import convert_gguf
from localllm.loader.resolve import resolve_model
from tiny_models import write_tiny_gguf


@pytest.fixture(scope="module")
def smollm2_dir(localllm_home) -> Path:
    """The embedded model converted in the session's data dir (conftest), where the other tests convert it too:
    one conversion of the real GGUF per session."""
    return resolve_model(None)


def _tensor(model_dir: Path, name: str) -> np.ndarray:
    with safe_open(str(model_dir / "model.safetensors"), framework="np") as f:
        return f.get_tensor(name)


def _raw_gguf_tensors(gguf_path: Path, names: set[str]) -> dict[str, np.ndarray]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    return {t.name: dequantize(t.data, t.tensor_type) for t in GGUFReader(gguf_path).tensors if t.name in names}


def _hf_rows_from_gguf(raw: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp stores Hugging Face row h*D + j*D/2 + i of each head at h*D + 2*i + j."""
    head_dim = raw.shape[0] // num_heads
    out = np.empty_like(raw)
    for h in range(num_heads):
        for i in range(head_dim // 2):
            for j in range(2):
                out[h * head_dim + j * head_dim // 2 + i] = raw[h * head_dim + 2 * i + j]
    return out


def test_embedded_config_matches_smollm2(smollm2_dir):
    from transformers import AutoConfig

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (30, 576, 1536)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 100000.0 and config["rms_norm_eps"] == 1e-5
    assert config["max_position_embeddings"] == 8192
    assert AutoConfig.from_pretrained(smollm2_dir).num_key_value_heads == 3


def test_embedded_tokenizer_is_chatml_and_stops_at_im_end(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode([tokenizer.eos_token_id]) == "<|im_end|>"
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert tokenizer.decode([generation["eos_token_id"]]) == "<|im_end|>"


def test_qk_rows_are_back_in_hugging_face_order(smollm2_dir):
    raw = _raw_gguf_tensors(embedded_gguf_path(), {f"blk.3.attn_{x}.weight" for x in "qkv"})
    raw_q, raw_k = raw["blk.3.attn_q.weight"], raw["blk.3.attn_k.weight"]
    q = _tensor(smollm2_dir, "model.layers.3.self_attn.q_proj.weight")
    k = _tensor(smollm2_dir, "model.layers.3.self_attn.k_proj.weight")
    assert not np.array_equal(q, raw_q)  # the permutation is not the identity
    np.testing.assert_array_equal(q, _hf_rows_from_gguf(raw_q, num_heads=9))
    np.testing.assert_array_equal(k, _hf_rows_from_gguf(raw_k, num_heads=3))
    # v is not permuted by llama.cpp
    v = _tensor(smollm2_dir, "model.layers.3.self_attn.v_proj.weight")
    np.testing.assert_array_equal(v, raw["blk.3.attn_v.weight"])
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="np") as f:
        assert "lm_head.weight" not in f.keys()  # tied


def test_second_resolve_hits_the_cache(smollm2_dir, localllm_home):
    weights = smollm2_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert resolve_model("smollm2:135m") == smollm2_dir
    assert resolve_model(str(embedded_gguf_path())) == smollm2_dir  # keyed by the file, not the name
    assert time.perf_counter() - start < 1.0
    assert weights.stat().st_mtime_ns == mtime
    # no leftover build dirs: the session's data dir holds other tests' conversions too, each a published
    # <stem>-<digest>[-blocks] directory (convert_gguf builds in a hidden .<name>.partial-* one beside it)
    assert smollm2_dir.parent == localllm_home / "converted"
    assert all(re.fullmatch(r"[^.].*-[0-9a-f]{16}(-blocks)?", p.name) for p in smollm2_dir.parent.iterdir())


@pytest.mark.parametrize("damage", ["first 1 MB", "first half", "random bytes"])
def test_damaged_gguf_raises_corrupt_model_error(tmp_path, damage):
    source = embedded_gguf_path()
    damaged = tmp_path / "damaged.gguf"
    if damage == "random bytes":
        damaged.write_bytes(np.random.default_rng(0).bytes(1 << 20))
    else:
        with open(source, "rb") as f:
            damaged.write_bytes(f.read(1 << 20 if damage == "first 1 MB" else source.stat().st_size // 2))
    with pytest.raises(CorruptModelError, match="damaged.gguf") as error:
        resolve_model(str(damaged))
    assert "\n" not in str(error.value)


def test_unknown_name_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model 'no-such-model:7b' not found"):
        resolve_model("no-such-model:7b")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))


def test_directory_with_config_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_unsupported_architecture_raises(tmp_path):
    import gguf

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(path, "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="'mamba'"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# A tiny llama GGUF written here, to cover what SmolLM2 lacks: Llama 3 rope scaling and a failed write.

_TINY_HEADS, _TINY_KV_HEADS, _TINY_HEAD_DIM, _TINY_THETA = 2, 1, 16, 500000.0


def _llama3_rope_freqs(factor=32.0, low=1.0, high=4.0, old_len=8192) -> np.ndarray:
    """Written out from llama.cpp's convert_hf_to_gguf.py (LlamaModel, rope_type llama3)."""
    values = []
    for k in range(0, _TINY_HEAD_DIM, 2):
        wavelen = 2 * math.pi * _TINY_THETA ** (k / _TINY_HEAD_DIM)
        if wavelen < old_len / high:
            values.append(1.0)
        elif wavelen > old_len / low:
            values.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            values.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(values, dtype=np.float32)


def _write_tiny_llama(path: Path, rope_freqs: np.ndarray) -> None:
    write_tiny_gguf(path, rope_theta=_TINY_THETA, rope_freqs=rope_freqs, context_length=131072)


def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path):
    _write_tiny_llama(tmp_path / "tiny.gguf", _llama3_rope_freqs())
    convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert config["tie_word_embeddings"] is True and config["head_dim"] == _TINY_HEAD_DIM


def test_unrecognised_rope_freqs_raise(tmp_path):
    _write_tiny_llama(tmp_path / "tiny.gguf", _llama3_rope_freqs(low=2.0))
    with pytest.raises(UnsupportedModelError, match="rope_freqs"):
        convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")


def test_failed_conversion_leaves_no_directory(tmp_path, monkeypatch):
    from localllm.loader import gguf as gguf_loader

    _write_tiny_llama(tmp_path / "tiny.gguf", _llama3_rope_freqs())

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_loader, "_write_safetensors", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(tmp_path / "tiny.gguf", tmp_path / "cache" / "out")
    assert list((tmp_path / "cache").iterdir()) == []


def test_data_dir_follows_localllm_home(monkeypatch, tmp_path):
    from localllm.hub.paths import data_dir

    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.delenv("LOCALLLM_HOME")
    assert data_dir().name.lower() == "localllm" and data_dir() != tmp_path
