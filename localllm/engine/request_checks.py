"""What the engine core refuses before a request is queued, each in one line: a ValueError, or a PromptTooLongError
for a prompt the context cannot hold."""
from __future__ import annotations

from localllm.errors import PromptTooLongError
from localllm.pooling_params import PoolingParams
from localllm.sampling_params import SamplingParams


def check_in_vocabulary(token_ids: list[int], vocab_size: int, what: str) -> None:
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{what} {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")


def check_generation(params: SamplingParams, n: int, max_model_len: int, vocab_size: int, has_lm_head: bool) -> None:
    if not has_lm_head:
        raise ValueError("the model has no language-model head: it computes embeddings only")
    if n >= max_model_len:
        raise PromptTooLongError(f"the prompt has {n} tokens but the context holds {max_model_len}, "
                                 "and at least one must be left for the reply")
    check_in_vocabulary(params.stop_token_ids, vocab_size, "stop token id")   # the sampler indexes logits by these
    check_in_vocabulary(list(params.logit_bias), vocab_size, "logit_bias token id")


def check_pooling(params: PoolingParams, n: int, max_model_len: int, pooler) -> None:
    if pooler is None:
        raise ValueError("the model is not an embedding model (it has no sentence-transformers pooling config)")
    if n > max_model_len:
        raise PromptTooLongError(f"the input has {n} tokens but the context holds {max_model_len}")
    dimension = pooler.config.dimension
    if params.dimensions is not None and params.dimensions > dimension:
        raise ValueError(f"dimensions must be at most {dimension}, the model's, got {params.dimensions}")
