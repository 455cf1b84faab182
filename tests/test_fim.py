"""Fill-in-the-middle prompts: for each known set of FIM tokens, the exact token ids transformers' tokenizer gives
for the same layout (a BOS first where the tokenizer adds one); a tokenizer without FIM tokens is refused."""
from __future__ import annotations

import pytest
from tokenizers import processors

from localllm.loader.fim import FORMATS, FimUnsupportedError, fim_prompt, fim_tokens
from localllm.loader.tokenizer import Tokenizer
from tiny_models import build_tokenizer

PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


def saved(tokenizer, path) -> Tokenizer:
    tokenizer.save_pretrained(path)
    return Tokenizer.from_dir(path)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.prefix)
def test_each_known_layout_gives_transformers_ids(fmt, tmp_path):
    names = [fmt.prefix, fmt.suffix] + ([fmt.middle] if fmt.middle else [])
    hf = build_tokenizer(special_tokens=tuple(names))
    pre, suf, *mid = hf.convert_tokens_to_ids(names)
    prefix_ids = hf(PREFIX, add_special_tokens=False)["input_ids"]
    suffix_ids = hf(SUFFIX, add_special_tokens=False)["input_ids"]
    expected = ([suf, *suffix_ids, pre, *prefix_ids] if fmt.suffix_first
                else [pre, *prefix_ids, suf, *suffix_ids, *mid])
    tokenizer = saved(hf, tmp_path)
    assert fim_tokens(tokenizer).suffix_first == fmt.suffix_first
    assert fim_prompt(tokenizer, PREFIX, SUFFIX) == expected


def test_a_tokenizer_that_adds_a_bos_gets_it_first(tmp_path):
    hf = build_tokenizer(special_tokens=("<fim_prefix>", "<fim_suffix>", "<fim_middle>"))
    bos = hf.convert_tokens_to_ids("<|im_start|>")
    hf.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    tokenizer = saved(hf, tmp_path)
    pre, suf, mid = hf.convert_tokens_to_ids(["<fim_prefix>", "<fim_suffix>", "<fim_middle>"])
    assert fim_prompt(tokenizer, "a", "b") == [bos, pre, *hf("a", add_special_tokens=False)["input_ids"], suf,
                                                *hf("b", add_special_tokens=False)["input_ids"], mid]


def test_a_tokenizer_without_fim_tokens_is_refused(tmp_path):
    tokenizer = saved(build_tokenizer(), tmp_path)
    assert fim_tokens(tokenizer) is None
    with pytest.raises(FimUnsupportedError, match="no fill-in-the-middle tokens"):
        fim_prompt(tokenizer, PREFIX, SUFFIX)
