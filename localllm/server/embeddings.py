"""Embeddings as every route serves them: `embed` loads the model, checks that it is an embedding model and that
it allows the size asked for, tokenizes the inputs, runs them through the engine's pooling requests (batched with
whatever else the model is doing) and hands back one vector per input. /v1/embeddings shapes its answer the
OpenAI way; an Ollama-style /api/embed calls the same function. Errors are APIErrors (400 for a chat model or a
bad input), raised before anything runs where they can be."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from localllm.pooling_params import PoolingParams
from localllm.server.errors import APIError
from localllm.server.jobs import Job, unless_disconnected

MAX_INPUTS = 2048   # inputs in one request, as OpenAI allows

Inputs = str | list[str] | list[int] | list[list[int]]


@dataclass
class EmbeddingResult:
    model: str                     # the model's name as the daemon calls it
    vectors: list[list[float]]     # one per input, in order
    prompt_tokens: int             # tokens of all the inputs (after truncation)
    load_s: float                  # how long the request waited for the model to load (0 when it was loaded)
    total_s: float


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


async def embed(http_request, model: str, inputs: Inputs, *, dimensions: int | None = None, truncate: bool = False,
                keep_alive_s: float | None = None, param: str = "input") -> EmbeddingResult:
    """One vector per input (texts, or token ids). truncate: cut inputs longer than the context to fit (else 400).
    Raises ClientGone (localllm.server.jobs) when the HTTP client leaves before the answer; `param` names the
    inputs in error messages."""
    started = time.monotonic()
    items = _input_list(inputs, param)
    daemon = http_request.app.state.daemon
    loaded = await daemon.models.acquire(model)
    load_s = time.monotonic() - started
    job = Job(daemon.models, loaded, keep_alive_s)
    try:
        client = loaded.client
        pooling = client.pooling
        if pooling is None:
            raise _bad(f"The model '{loaded.name}' is not an embedding model (it has no sentence-transformers "
                       "pooling config, modules.json); use an embedding model such as qwen3-embedding:0.6b.",
                       "model", "model_not_embedding")
        params = _pooling_params(pooling, dimensions)
        # a long input takes a while to tokenize: in a thread, so others are served meanwhile
        prompts = await asyncio.to_thread(_token_ids, client, items, truncate, param)
        daemon.metrics.prompt_tokens.labels(loaded.name).inc(sum(map(len, prompts)))
        vectors = await unless_disconnected(http_request, job.embeddings(prompts, params))
    finally:
        job.close()
    return EmbeddingResult(loaded.name, vectors, sum(map(len, prompts)), load_s, time.monotonic() - started)


def _input_list(inputs: Inputs, param: str) -> list[str] | list[list[int]]:
    if isinstance(inputs, str):
        items = [inputs]
    elif inputs and isinstance(inputs[0], int):
        items = [list(inputs)]
    else:
        items = list(inputs)
    if not items:
        raise _bad(f"'{param}' must not be empty.", param)
    if len(items) > MAX_INPUTS:
        raise _bad(f"'{param}' has {len(items)} inputs; at most {MAX_INPUTS} may be embedded at once.", param)
    if any(len(item) == 0 for item in items):
        raise _bad(f"'{param}' must not contain an empty string or an empty list of tokens.", param)
    return items


def _pooling_params(pooling, dimensions: int | None) -> PoolingParams:
    if dimensions is None or dimensions == pooling.dimension:
        return PoolingParams()
    if not pooling.allows_dimensions(dimensions):
        allowed = pooling.matryoshka_dimensions
        if not allowed:
            message = (f"This model does not support 'dimensions' other than its own {pooling.dimension} (it is not "
                       "trained for Matryoshka truncation).")
        elif allowed == list(range(allowed[0], allowed[-1] + 1)):
            message = f"'dimensions' must be between {allowed[0]} and {allowed[-1]} for this model, got {dimensions}."
        else:
            message = f"'dimensions' must be one of {allowed} for this model, got {dimensions}."
        raise _bad(message, "dimensions")
    return PoolingParams(dimensions=dimensions)


def _token_ids(client, items: list[str] | list[list[int]], truncate: bool, param: str) -> list[list[int]]:
    vocab_size, context = client.info.vocab_size, client.info.max_model_len
    prompts = [client.tokenizer.encode(item) if isinstance(item, str) else item for item in items]
    for i, ids in enumerate(prompts):
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise _bad(f"Token id {bad} is outside the vocabulary (0..{vocab_size - 1}).", param)
        if len(ids) > context:
            if not truncate:
                raise _bad(f"This model's maximum context length is {context} tokens, but input {i} has "
                           f"{len(ids)} tokens. Please shorten it.", param, "context_length_exceeded")
            prompts[i] = ids[:context]
    return prompts
