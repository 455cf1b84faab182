"""Bad input fails at once with one clear message, and leaves the engine usable."""
from __future__ import annotations

import json
import shutil

import pytest

from localllm import LLM, SamplingParams
from localllm.errors import CorruptModelError, ModelNotFoundError, PromptTooLongError, UnsupportedModelError
from tiny_models import build_model_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_model_dir("llama", tmp_path_factory.mktemp("llama"))


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_unknown_model_path(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        LLM(str(tmp_path / "no-such-model"))
    assert "no-such-model" in one_line(e)


def test_unsupported_architecture(llama_dir, tmp_path):
    target = shutil.copytree(llama_dir, tmp_path / "gpt2")
    config = json.loads((target / "config.json").read_text())
    config.update(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox")
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as e:
        LLM(str(target))
    assert "GPTNeoXForCausalLM" in one_line(e)


def test_truncated_safetensors(llama_dir, tmp_path):
    target = shutil.copytree(llama_dir, tmp_path / "truncated")
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptModelError) as e:
        LLM(str(target))
    assert "model.safetensors" in one_line(e)


def test_garbage_safetensors(llama_dir, tmp_path):
    target = shutil.copytree(llama_dir, tmp_path / "garbage")
    (target / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 100)
    with pytest.raises(CorruptModelError):
        LLM(str(target))


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    with pytest.raises(CorruptModelError) as e:
        LLM(str(bad))
    one_line(e)


def test_prompt_longer_than_model_length(llama_dir):
    llm = LLM(str(llama_dir), max_model_len=32, num_kv_blocks=16)
    with pytest.raises(PromptTooLongError) as e:
        llm.generate([list(range(1, 33))], SamplingParams(max_tokens=4))
    assert "32" in one_line(e)
    # the engine is still usable, with nothing left behind
    out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    assert llm.engine.core.block_manager.num_free_blocks == 16


def test_token_id_outside_vocabulary(llama_dir):
    llm = LLM(str(llama_dir), num_kv_blocks=16)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([[1, 2, 100000]])


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -3), ("min_p", 2.0), ("n", 0),
    ("max_tokens", 0), ("repetition_penalty", 0.0), ("presence_penalty", 3.0), ("frequency_penalty", -2.5),
    ("logprobs", 50), ("min_tokens", -1),
])
def test_invalid_sampling_values(field, value):
    with pytest.raises(ValueError) as e:
        SamplingParams(**{field: value})
    assert field in one_line(e)


def test_min_tokens_above_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=10, max_tokens=5)
