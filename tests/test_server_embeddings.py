"""/v1/embeddings through the official `openai` client against a real daemon: the vectors equal the offline
engine's (float and base64, text and token input, Matryoshka truncation), usage counts the input tokens, and a
chat model asked for embeddings, or an embedding model asked to chat, gets a clear 400."""
from __future__ import annotations

import openai
import pytest
import torch

from daemon_helpers import running_daemon
from localllm import LLM
from localllm.pooling_params import PoolingParams
from tiny_models import build_embedding_model_dir, build_model_dir

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paged attention", "été, naïve, 日本語, 🙂"]
# two sequences run and one more may wait: a call with more inputs than that feeds them in as others finish
ENGINE = ["block_size=4", "num_kv_blocks=128", "num_threads=1", "max_num_seqs=2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"matryoshka": str(build_embedding_model_dir(root / "tiny-mrl", "last",
                                                        config={"matryoshka_dimensions": [16, 32]})),
            "plain": str(build_embedding_model_dir(root / "tiny-mean", "mean", seed=1)),
            "chat": str(build_model_dir("llama", root / "tiny-llama"))}


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=list(models.values()), engine=ENGINE,
                        args=["--max-queued", "1"]) as d:
        yield d


@pytest.fixture(scope="module")
def oai(daemon):
    return daemon.openai()


@pytest.fixture(scope="module")
def offline(models):
    with LLM(models["matryoshka"], block_size=4, num_kv_blocks=128) as llm:
        yield llm


def assert_close(got, expected) -> None:
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-5)


def test_float_and_base64_vectors_equal_the_offline_engine(oai, offline, models):
    model = models["matryoshka"]
    expected = offline.embed(TEXTS)
    as_floats = oai.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    assert as_floats.object == "list" and as_floats.model == model
    assert [d.index for d in as_floats.data] == [0, 1, 2] and all(d.object == "embedding" for d in as_floats.data)
    assert_close([d.embedding for d in as_floats.data], expected)
    assert as_floats.usage.prompt_tokens == as_floats.usage.total_tokens == \
        sum(len(offline.tokenizer.encode(t)) for t in TEXTS)
    as_base64 = oai.embeddings.create(model=model, input=TEXTS)   # the client asks for base64 and decodes it
    assert_close([d.embedding for d in as_base64.data], expected)
    assert all(len(d.embedding) == 48 for d in as_base64.data)


def test_token_input_one_list_or_several(oai, offline, models):
    ids = [offline.tokenizer.encode(t) for t in TEXTS]
    one = oai.embeddings.create(model=models["matryoshka"], input=ids[0], encoding_format="float")
    several = oai.embeddings.create(model=models["matryoshka"], input=ids, encoding_format="float")
    assert_close([one.data[0].embedding], offline.embed([ids[0]]))
    assert_close([d.embedding for d in several.data], offline.embed(ids))
    assert several.usage.prompt_tokens == sum(map(len, ids))


def test_more_inputs_than_the_queue_takes_are_fed_in_turn(oai, offline, models):
    inputs = [f"{t} {i}" for i in range(4) for t in TEXTS]   # 12 inputs; the model's queue takes 3
    got = oai.embeddings.create(model=models["matryoshka"], input=inputs, encoding_format="float")
    assert_close([d.embedding for d in got.data], offline.embed(inputs))


def test_dimensions_where_the_model_allows_them(oai, offline, models):
    got = oai.embeddings.create(model=models["matryoshka"], input=TEXTS[0], dimensions=16, encoding_format="float")
    assert len(got.data[0].embedding) == 16
    assert_close([got.data[0].embedding], offline.embed(TEXTS[0], PoolingParams(dimensions=16)))
    norm = sum(x * x for x in got.data[0].embedding) ** 0.5
    assert abs(norm - 1) < 1e-5   # truncated, then normalized again
    full = oai.embeddings.create(model=models["matryoshka"], input=TEXTS[0], dimensions=48)
    assert len(full.data[0].embedding) == 48
    for model, dimensions, message in [(models["matryoshka"], 20, "must be one of [16, 32, 48]"),
                                       (models["plain"], 16, "does not support 'dimensions'")]:
        with pytest.raises(openai.BadRequestError) as refused:
            oai.embeddings.create(model=model, input=TEXTS[0], dimensions=dimensions)
        assert message in refused.value.message and refused.value.body["param"] == "dimensions"


def test_a_chat_model_is_refused_embeddings_and_an_embedding_model_chat(oai, models):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.embeddings.create(model=models["chat"], input="hello")
    assert refused.value.code == "model_not_embedding" and "not an embedding model" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=models["plain"], messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_generative" and "/v1/embeddings" in refused.value.message


@pytest.mark.parametrize("body, param, message", [
    ({"input": []}, "input", "must not be empty"),
    ({"input": ["a", ""]}, "input", "empty string"),
    ({"input": [[1, 2], [100000]]}, "input", "outside the vocabulary"),
    ({"input": "fox " * 600}, "input", "maximum context length is 512 tokens"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", "'float' or 'base64'"),
    ({"input": "a", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
])
def test_bad_inputs_get_400(daemon, models, body, param, message):
    with daemon.http() as http:
        response = http.post("/v1/embeddings", json={"model": models["plain"], **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"]


def test_the_ollama_embed_routes_serve_the_same_vectors(daemon, oai, offline, models):
    import ollama

    client = ollama.Client(host=daemon.url, timeout=120)
    got = client.embed(model=models["matryoshka"], input=TEXTS)
    assert got.model == models["matryoshka"] and got.prompt_eval_count == sum(len(offline.tokenizer.encode(t))
                                                                              for t in TEXTS)
    assert_close(got.embeddings, offline.embed(TEXTS))
    assert got.total_duration >= got.load_duration >= 0
    assert_close(client.embed(model=models["matryoshka"], input=TEXTS[0], dimensions=16).embeddings,
                 offline.embed(TEXTS[0], PoolingParams(dimensions=16)))
    assert_close([client.embeddings(model=models["matryoshka"], prompt=TEXTS[1]).embedding], offline.embed([TEXTS[1]]))
    cut = client.embed(model=models["plain"], input="fox " * 600)   # cut to the context, as Ollama's default
    assert cut.prompt_eval_count == 512
    assert client.show(models["plain"]).capabilities == ["embedding"]
    for kwargs, status, fragment in [({"model": models["chat"], "input": "hi"}, 400, "not an embedding model"),
                                     ({"model": models["plain"], "input": "fox " * 600, "truncate": False}, 400,
                                      "maximum context length"),
                                     ({"model": "no-such-model", "input": "hi"}, 404, "not found")]:
        with pytest.raises(ollama.ResponseError) as refused:
            client.embed(**kwargs)
        assert refused.value.status_code == status and fragment in refused.value.error
