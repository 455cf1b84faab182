"""Fill-in-the-middle through /v1/completions with `suffix`, against a real daemon: on a tiny model whose tokenizer
has FIM tokens, the prompt is exactly <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> (as transformers'
tokenizer spells its parts) and the answer is the offline engine's on those ids; a model without FIM tokens, or a
token prompt with a suffix, gets a 400."""
from __future__ import annotations

import openai
import pytest
from transformers import AutoTokenizer

from daemon_helpers import running_daemon
from localllm import LLM, SamplingParams
from tiny_models import build_model_dir

FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
PREFIX, SUFFIX = "The quick brown ", " jumps over the lazy dog."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"fim": str(build_model_dir("llama", root / "tiny-fim", special_tokens=FIM)),
            "plain": str(build_model_dir("qwen2", root / "tiny-plain"))}


@pytest.fixture(scope="module")
def oai(models, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=list(models.values())) as d:
        yield d.openai()


def fim_ids(model_dir: str, prefix: str, suffix: str) -> list[int]:
    hf = AutoTokenizer.from_pretrained(model_dir)
    pre, suf, mid = hf.convert_tokens_to_ids(list(FIM))
    return [pre, *hf(prefix, add_special_tokens=False)["input_ids"], suf,
            *hf(suffix, add_special_tokens=False)["input_ids"], mid]


def test_the_fim_prompt_and_its_completion(oai, models):
    ids = fim_ids(models["fim"], PREFIX, SUFFIX)
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    with LLM(models["fim"], block_size=4, num_kv_blocks=128) as offline:
        expected = offline.generate(ids, greedy)[0].outputs[0].text
        second = offline.generate(fim_ids(models["fim"], "Paged ", SUFFIX), greedy)[0].outputs[0].text
    r = oai.completions.create(model=models["fim"], prompt=PREFIX, suffix=SUFFIX, max_tokens=6, temperature=0,
                               extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == len(ids) and r.choices[0].text == expected
    both = oai.completions.create(model=models["fim"], prompt=[PREFIX, "Paged "], suffix=SUFFIX, max_tokens=6,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert [c.text for c in both.choices] == [expected, second]


def test_no_fim_tokens_or_a_token_prompt_gets_400(oai, models):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model=models["plain"], prompt=PREFIX, suffix=SUFFIX, max_tokens=2)
    assert refused.value.body["param"] == "suffix" and "cannot fill in the middle" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model=models["fim"], prompt=[1, 2, 3], suffix=SUFFIX, max_tokens=2)
    assert refused.value.body["param"] == "prompt" and "must be text" in refused.value.message


def test_api_generate_with_a_suffix_fills_in_the_middle(oai, models):
    import ollama

    client = ollama.Client(host=str(oai.base_url).removesuffix("/v1/"), timeout=120)
    expected = oai.completions.create(model=models["fim"], prompt=PREFIX, suffix=SUFFIX, max_tokens=6, temperature=0)
    answer = client.generate(models["fim"], PREFIX, suffix=SUFFIX, options={"temperature": 0, "num_predict": 6})
    assert answer.prompt_eval_count == expected.usage.prompt_tokens and answer.context is None
    assert answer.response == expected.choices[0].text and answer.eval_count == expected.usage.completion_tokens
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(models["plain"], PREFIX, suffix=SUFFIX)
    assert refused.value.status_code == 400 and "cannot fill in the middle" in refused.value.error
