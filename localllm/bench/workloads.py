"""The prompts `localllm bench` runs: random token ids drawn from a seed, so every backend and every run gets the
same ones, and nano-vllm's throughput workload."""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from localllm.sampling_params import Guidance

NANO_VLLM_TEMPERATURE = 0.6
PROMPT_TOKEN_IDS = 10000   # random prompts draw from the first ids, as nano-vllm's do


@dataclass
class Workload:
    """Prompts and how many tokens each must produce (end of sequence ignored); temperature 0 = greedy."""
    name: str
    prompts: list[list[int]]
    max_tokens: list[int]
    temperature: float
    guidance: Guidance | None = None   # a grammar every request follows, one that never ends


def guided(workload: Workload) -> Workload:
    """The same workload with every request under the small JSON schema of `bench grammar`: JSON objects one
    after another, so each request still produces exactly its max_tokens."""
    from localllm.bench.grammar import endless_objects_guidance

    return replace(workload, name=f"{workload.name}, JSON schema", guidance=endless_objects_guidance())


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def prompt_vocab(vocab_size: int) -> int:
    return min(vocab_size, PROMPT_TOKEN_IDS)


def nano_vllm_workload() -> Workload:
    """nano-vllm's bench.py workload: 256 sequences, 133,966 output tokens in total, temperature 0.6."""
    rng = random.Random(0)
    prompts = [[rng.randint(0, PROMPT_TOKEN_IDS) for _ in range(rng.randint(100, 1024))] for _ in range(256)]
    max_tokens = [rng.randint(100, 1024) for _ in range(256)]
    return Workload("nano-vllm", prompts, max_tokens, NANO_VLLM_TEMPERATURE)


def throughput_workload(name: str, vocab_size: int, streams: int, prompt_tokens: int, new_tokens: int,
                        seed: int = 0) -> Workload:
    if name == "nano-vllm":
        if vocab_size <= PROMPT_TOKEN_IDS:
            raise ValueError(f"the nano-vllm workload draws token ids up to {PROMPT_TOKEN_IDS:,}; this model's "
                             f"vocabulary has {vocab_size:,}")
        return nano_vllm_workload()
    if name == "streams":
        prompts = random_prompts(streams, prompt_tokens, prompt_vocab(vocab_size), seed)
        return Workload("streams", prompts, [new_tokens] * streams, 0.0)
    raise ValueError(f"unknown workload {name!r}; use 'streams' or 'nano-vllm'")
