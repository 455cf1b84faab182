"""Embeddings from the engine's pooling requests equal transformers' AutoModel with the same pooling (fp32), alone,
batched together, batched with generation, chunked over several prefill steps, through the prefix cache and
after preemption."""
from __future__ import annotations

import pytest
import torch

from localllm import LLM, SamplingParams
from localllm.errors import PromptTooLongError
from localllm.loader.pooling_config import read_pooling_config
from localllm.pooling_params import PoolingParams
from tiny_models import build_embedding_model_dir, build_model_dir, hf_embeddings

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paged attention",
         "Continuous batching lets new prompts join while others decode. " * 3, "été"]
ENGINE = dict(block_size=4, num_kv_blocks=128, num_threads=1)
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def assert_close(got: list[list[float]], expected: list[list[float]]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), **TOLERANCE)


@pytest.fixture(scope="module", params=[("last", True), ("mean", True), ("cls", False)], ids=lambda p: p[0])
def embedder(request, tmp_path_factory):
    mode, normalize = request.param
    model_dir = build_embedding_model_dir(tmp_path_factory.mktemp("embed") / f"tiny-{mode}", mode, normalize)
    return model_dir, mode, normalize


def test_the_pooling_config_is_read_from_the_sentence_transformers_files(embedder):
    model_dir, mode, normalize = embedder
    config = read_pooling_config(model_dir)
    assert (config.mode, config.normalize, config.dimension, config.matryoshka_dimensions) == \
        (mode, normalize, 48, None)


def test_alone_batched_and_chunked_equal_transformers(embedder):
    model_dir, mode, normalize = embedder
    expected = hf_embeddings(model_dir, TEXTS, mode, normalize)
    # 8 tokens a step: the long input is prefilled over several steps, its pooling carried from chunk to chunk
    with LLM(str(model_dir), max_num_batched_tokens=8, **ENGINE) as llm:
        assert len(llm.tokenizer.encode(TEXTS[2])) > 30
        assert_close([llm.embed(text)[0] for text in TEXTS], expected)
        assert_close(llm.embed(TEXTS), expected)
        # the same inputs again: last-token pooling takes their cached prefix, mean and cls must not
        assert_close(llm.embed(TEXTS), expected)
        assert llm.engine.core.block_manager.stats.hits > 0 if mode == "last" else \
            llm.engine.core.block_manager.stats.hits == 0
        assert llm.engine.core.block_manager.num_free_blocks == 128   # nothing kept after the step


@pytest.mark.parametrize("mode", ["last", "mean", "cls"])
def test_preempted_pooling_sequences_are_recomputed_from_the_start(mode, tmp_path):
    model_dir = build_embedding_model_dir(tmp_path / mode, mode, bare=False)
    # a decoding sequence fills a 12-block pool, so the pooling one, admitted after it, is preempted mid-prompt
    with LLM(str(model_dir), block_size=4, num_kv_blocks=12, max_num_batched_tokens=16, num_threads=1) as llm:
        engine = llm.engine
        engine.add_request("gen", list(range(1, 21)), SamplingParams(temperature=0, max_tokens=25, ignore_eos=True))
        engine.add_embedding_request("emb", llm.tokenizer.encode(TEXTS[0]), PoolingParams())
        got = []
        while engine.has_unfinished:
            engine.step()
            got += [e.embedding for e in engine.take_embeddings()]
        assert engine.core.scheduler.num_preemptions > 0
    assert_close(got, hf_embeddings(model_dir, [TEXTS[0]], mode, True))


def test_token_ids_in_and_matryoshka_truncation(embedder):
    model_dir, mode, normalize = embedder
    with LLM(str(model_dir), **ENGINE) as llm:
        ids = llm.tokenizer.encode(TEXTS[0])
        assert ids[-1] == llm.tokenizer.convert_tokens_to_ids("<|im_end|>")   # the tokenizer's own end token
        full = llm.embed(ids)[0]
        short = llm.embed(ids, PoolingParams(dimensions=16))[0]
        with pytest.raises(ValueError, match="dimensions must be at most 48"):
            llm.embed(ids, PoolingParams(dimensions=49))
    head = torch.tensor(full[:16])
    expected = torch.nn.functional.normalize(head, dim=0) if normalize else head
    assert len(short) == 16
    torch.testing.assert_close(torch.tensor(short), expected, **TOLERANCE)


def test_embeddings_batch_with_generation_in_the_same_steps(tmp_path):
    model_dir = build_embedding_model_dir(tmp_path / "tiny-with-head", "mean", bare=False)
    expected = hf_embeddings(model_dir, TEXTS, "mean", True)
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    with LLM(str(model_dir), max_num_batched_tokens=16, **ENGINE) as llm:
        alone = llm.generate(TEXTS[1], greedy)[0].outputs[0].token_ids
        engine = llm.engine
        engine.add_request("gen", llm.tokenizer.encode(TEXTS[1]), greedy)
        for i, text in enumerate(TEXTS):
            engine.add_embedding_request(f"emb{i}", llm.tokenizer.encode(text), PoolingParams())
        steps = []   # the request ids of each step, as the scheduler decided them
        schedule = engine.core.scheduler.schedule
        engine.core.scheduler.schedule = lambda: steps.append(out := schedule()) or out
        tokens, vectors = [], {}
        while engine.has_unfinished:
            tokens += [t for d in engine.step() for t in d.token_ids]
            vectors.update((e.request_id, e.embedding) for e in engine.take_embeddings())
    assert tokens == alone
    mixed = [{s.seq.request_id for s in out.scheduled} for out in steps]
    assert any("gen" in ids and len(ids) > 2 for ids in mixed)
    assert_close([vectors[f"emb{i}"] for i in range(len(TEXTS))], expected)


def test_refusals(tmp_path):
    chat_dir = build_model_dir("llama", tmp_path / "chat")
    with LLM(str(chat_dir), **ENGINE) as llm:
        assert read_pooling_config(chat_dir) is None
        with pytest.raises(ValueError, match="not an embedding model"):
            llm.embed("hello")
    embed_dir = build_embedding_model_dir(tmp_path / "embed", "last")
    with LLM(str(embed_dir), max_model_len=16, **ENGINE) as llm:
        with pytest.raises(ValueError, match="no language-model head"):
            llm.generate("hello")
        assert len(llm.embed(list(range(16)))[0]) == 48   # the whole context may be pooled
        with pytest.raises(PromptTooLongError, match="17 tokens but the context holds 16"):
            llm.embed(list(range(17)))
