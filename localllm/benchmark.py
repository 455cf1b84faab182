"""Benchmark workloads for `localllm bench`: batch-1 latency and many-stream throughput, timed inside one
process around the engine core so that the numbers are the engine's, not the terminal's."""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

from localllm.sampling_params import SamplingParams


@dataclass
class LatencyResult:
    model: str
    device: str
    dtype: str
    load_s: float
    ttft_prompt_tokens: int
    ttft_ms: float
    decode_prompt_tokens: int
    decode_tokens: int
    decode_tokens_per_s: float


@dataclass
class ThroughputResult:
    model: str
    device: str
    dtype: str
    workload: str
    sequences: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float
    output_tokens_per_s: float
    preemptions: int


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def nano_vllm_workload() -> tuple[list[list[int]], list[int]]:
    """nano-vllm's bench.py workload: 256 sequences, 133,966 output tokens in total."""
    rng = random.Random(0)
    prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(100, 1024))] for _ in range(256)]
    max_tokens = [rng.randint(100, 1024) for _ in range(256)]
    return prompts, max_tokens


def _run_to_completion(core) -> int:
    tokens = 0
    while core.has_unfinished:
        tokens += len(core.step())
    return tokens


def measure_latency(core, load_s: float, model: str, prompt_tokens: int = 128, new_tokens: int = 256,
                    ttft_prompt_tokens: int = 1024, seed: int = 0) -> LatencyResult:
    vocab = min(core.vocab_size, 10000)
    greedy = dict(temperature=0.0, ignore_eos=True)
    warm = random_prompts(1, 16, vocab, seed + 1)[0]
    core.add_request("warmup", warm, SamplingParams(max_tokens=4, **greedy))
    _run_to_completion(core)

    ttft_prompt = random_prompts(1, ttft_prompt_tokens, vocab, seed + 2)[0]
    start = time.perf_counter()
    core.add_request("ttft", ttft_prompt, SamplingParams(max_tokens=1, **greedy))
    _run_to_completion(core)
    ttft_ms = (time.perf_counter() - start) * 1000

    core.add_request("decode", random_prompts(1, prompt_tokens, vocab, seed)[0],
                     SamplingParams(max_tokens=new_tokens, **greedy))
    while not core.step():   # prefill (possibly in chunks) until the first token
        pass
    start = time.perf_counter()
    decoded = _run_to_completion(core)
    rate = decoded / (time.perf_counter() - start)
    return LatencyResult(model, str(core.device), str(core.dtype).removeprefix("torch."), load_s,
                         ttft_prompt_tokens, ttft_ms, prompt_tokens, new_tokens, rate)


def measure_throughput(core, model: str, workload: str = "streams", streams: int = 16, prompt_tokens: int = 128,
                       new_tokens: int = 256, seed: int = 0) -> ThroughputResult:
    if workload == "nano-vllm":
        prompts, max_tokens = nano_vllm_workload()
        params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=m) for m in max_tokens]
    else:
        prompts = random_prompts(streams, prompt_tokens, min(core.vocab_size, 10000), seed)
        params = [SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=new_tokens)] * streams
    core.add_request("warmup", prompts[0][:16], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    _run_to_completion(core)
    preempted_before = core.scheduler.num_preemptions
    start = time.perf_counter()
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        core.add_request(f"bench-{i}", prompt, p)
    output_tokens = _run_to_completion(core)
    elapsed = time.perf_counter() - start
    return ThroughputResult(model, str(core.device), str(core.dtype).removeprefix("torch."), workload, len(prompts),
                            sum(map(len, prompts)), output_tokens, elapsed, output_tokens / elapsed,
                            core.scheduler.num_preemptions - preempted_before)


def as_dict(result) -> dict:
    return asdict(result)
