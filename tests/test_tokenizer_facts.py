"""The engine takes its end-of-sequence ids without reading the whole tokenizer: the tokenizer's eos id is read
once, then from the data directory's cache, and must always be the id the tokenizer itself gives."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from localllm.errors import CorruptModelError
from localllm.loader.hf_dir import open_model
from localllm.loader.tokenizer import Tokenizer
from localllm.loader.tokenizer_facts import tokenizer_eos_id
from tiny_models import build_model_dir


@pytest.fixture
def model_dir(tmp_path):
    return build_model_dir("qwen2", tmp_path / "qwen2")


def test_the_cached_id_is_the_tokenizers_own(model_dir):
    expected = Tokenizer.from_dir(model_dir).eos_token_id
    assert expected == Tokenizer.from_dir(model_dir).convert_tokens_to_ids("<|im_end|>")
    assert tokenizer_eos_id(model_dir) == expected   # read, then cached
    assert tokenizer_eos_id(model_dir) == expected   # from the cache


def test_a_cached_id_is_read_without_the_tokenizer(model_dir):
    expected = tokenizer_eos_id(model_dir)
    code = ("import json, sys\nfrom pathlib import Path\nfrom localllm.loader.tokenizer_facts import tokenizer_eos_id\n"
            f"eos = tokenizer_eos_id(Path({str(model_dir)!r}))\n"
            "print(json.dumps([eos, sorted(m for m in ('tokenizers', 'localllm.loader.tokenizer', 'jinja2') "
            "if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [expected, []]


def test_a_changed_tokenizer_config_is_read_anew(model_dir):
    start = Tokenizer.from_dir(model_dir).convert_tokens_to_ids("<|im_start|>")
    assert tokenizer_eos_id(model_dir) != start
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|im_start|>"}))
    assert tokenizer_eos_id(model_dir) == start == Tokenizer.from_dir(model_dir).eos_token_id


def test_the_engine_stops_at_the_configs_and_the_tokenizers_eos_and_reads_the_tokenizer_only_when_asked(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "eos_token_id": 0}))
    files = open_model(str(model_dir))
    eos = Tokenizer.from_dir(model_dir).eos_token_id
    assert eos != 0 and files.eos_token_ids == {0, eos}
    assert "tokenizer" not in vars(files)                 # not read by open_model
    assert files.tokenizer.eos_token_id == eos            # read on first use


def test_a_model_without_a_tokenizer_is_refused_as_before(model_dir):
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(CorruptModelError, match="it has no tokenizer.json"):
        open_model(str(model_dir))
