"""A model's config is read by transformers' AutoConfig once, then from the data directory's cache without
importing transformers: both reads must give every attribute exactly as AutoConfig does."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoConfig, Qwen2Config

from localllm.errors import CorruptModelError
from localllm.layers.rotary import rope_parameters
from localllm.loader.config_cache import cache_path
from localllm.loader.hf_dir import load_hf_config
from tiny_models import BLOCK128_CONFIGS, CONFIGS

# every attribute of a model config that localllm reads (models, layers, engine, loader, benchmarks); rope_scaling,
# transformers' deprecated alias of rope_parameters, is compared through what the rotary embedding makes of both
READ_ATTRIBUTES = ("architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "vocab_size",
                   "tie_word_embeddings", "attention_bias", "mlp_bias", "layer_types", "sliding_window",
                   "rope_parameters", "rope_theta", "quantization_config", "eos_token_id")
MISSING = object()

# configs as they come in model directories: written by transformers' config classes (the tiny test models), and
# raw JSON that leaves fields to the defaults and older rope keys to the normalization
RAW_CONFIGS = {
    "llama-minimal": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                      "intermediate_size": 88, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300},
    "llama-old-rope": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                       "intermediate_size": 88, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "vocab_size": 300, "rope_theta": 500000.0,
                       "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "qwen2-awq": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 128,
                  "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "vocab_size": 300, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128,
                                                             "zero_point": True, "version": "gemm"}},
}
CLASS_CONFIGS = {**CONFIGS, "llama-block128": BLOCK128_CONFIGS["llama"],
                 "qwen2-sliding": lambda: Qwen2Config(vocab_size=301, hidden_size=40, intermediate_size=72,
                                                      num_hidden_layers=3, num_attention_heads=5, num_key_value_heads=1,
                                                      use_sliding_window=True, sliding_window=16, max_window_layers=1)}


def write_config(name: str, directory):
    directory.mkdir()
    if name in RAW_CONFIGS:
        (directory / "config.json").write_text(json.dumps(RAW_CONFIGS[name]))
    else:
        CLASS_CONFIGS[name]().save_pretrained(directory)
    return directory


def assert_read_as_transformers_does(ours, directory) -> None:
    theirs = AutoConfig.from_pretrained(directory)
    assert vars(ours) == json.loads(json.dumps(theirs.to_dict()))   # all of it, through JSON
    for name in READ_ATTRIBUTES:
        assert getattr(ours, name, MISSING) == getattr(theirs, name, MISSING), name
    assert rope_parameters(ours) == rope_parameters(theirs) == theirs.rope_scaling


@pytest.mark.parametrize("name", [*CLASS_CONFIGS, *RAW_CONFIGS])
def test_both_reads_give_what_autoconfig_gives(name, tmp_path):
    directory = write_config(name, tmp_path / name)
    assert not cache_path((directory / "config.json").read_bytes()).exists()
    assert_read_as_transformers_does(load_hf_config(directory), directory)    # read by transformers, cached
    assert cache_path((directory / "config.json").read_bytes()).exists()
    assert_read_as_transformers_does(load_hf_config(directory), directory)    # read from the cache


def test_the_sliding_window_layers_are_derived_as_transformers_derives_them(tmp_path):
    directory = write_config("qwen2-sliding", tmp_path / "qwen2")
    load_hf_config(directory)
    assert load_hf_config(directory).layer_types == ["full_attention", "sliding_attention", "sliding_attention"]


def test_a_cached_config_is_read_without_importing_transformers(tmp_path):
    directory = write_config("llama", tmp_path / "llama")
    expected = load_hf_config(directory).to_dict()
    code = ("import json, sys\nfrom localllm.loader.hf_dir import load_hf_config\n"
            f"config = load_hf_config(__import__('pathlib').Path({str(directory)!r}))\n"
            "print(json.dumps({'transformers': 'transformers' in sys.modules, 'config': config.to_dict()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout.splitlines()[-1])
    assert report == {"transformers": False, "config": expected}


def test_an_edited_config_is_read_anew(tmp_path):
    directory = write_config("llama", tmp_path / "llama")
    assert load_hf_config(directory).vocab_size == 331
    edited = {**json.loads((directory / "config.json").read_text()), "vocab_size": 333}
    (directory / "config.json").write_text(json.dumps(edited))
    assert load_hf_config(directory).vocab_size == 333


def test_a_damaged_cache_entry_is_read_anew(tmp_path):
    directory = write_config("qwen3", tmp_path / "qwen3")
    entry = cache_path((directory / "config.json").read_bytes())
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text('{"hidden_size": ')
    assert_read_as_transformers_does(load_hf_config(directory), directory)
    assert json.loads(entry.read_text()) == json.loads(json.dumps(AutoConfig.from_pretrained(directory).to_dict()))


def test_a_config_that_is_not_json_is_refused_and_not_cached(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(CorruptModelError, match="is not valid JSON"):
        load_hf_config(tmp_path)
    assert not cache_path((tmp_path / "config.json").read_bytes()).exists()
