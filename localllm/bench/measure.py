"""The three measurements of `localllm bench`: batch-1 latency, many-stream throughput and a decode sweep over
batch sizes, each figure beside its roofline. The results are defined here once; a backend (our engine in
engine_backend.py, transformers in hf_backend.py) only runs prompts and times them, inside one process, so that
the numbers are the runtime's, not the terminal's."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from localllm.bench.device_limits import DeviceLimits
from localllm.bench.roofline import ModelShape, decode_roofline, percent, prefill_floor_s
from localllm.bench.speculative import SpeculationFigures
from localllm.bench.workloads import Workload, prompt_vocab, random_prompts
from localllm.sampling_params import Guidance


@dataclass
class GenerateStats:
    output_tokens: int
    elapsed_s: float
    preemptions: int | None   # None where the runtime does not report them


class Backend(Protocol):
    name: str
    model: str
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    shape: ModelShape
    load_s: float

    def warm_up(self, prompt: list[int], guidance: Guidance | None = None) -> None:
        """A short greedy request (and one under guidance, if given): compiles, graphs and one-time loads."""

    def time_to_first_token_s(self, prompt: list[int]) -> float: ...

    def decode_tokens_per_s(self, prompt: list[int], new_tokens: int) -> float:
        """Greedy, timed from the first token (after prefill) to the last."""

    def generate_all(self, workload: Workload) -> GenerateStats: ...


@dataclass
class MemoryFigures:
    """What the weights run as and take (all ranks), and the most device memory the process held (rank 0's GPU,
    from loading on, CUDA graphs included; without the CUDA context's own few hundred MiB)."""
    quantization: str                   # "" = dense, in dtype
    weight_bytes: int
    file_bytes: int                     # the checkpoint's weight files; for random weights, a GGUF of them
    peak_allocated_bytes: int | None    # tensors, at their peak; CUDA only
    peak_reserved_bytes: int | None     # what torch's caching allocator held from the driver at its peak


def memory_figures(backend) -> MemoryFigures | None:
    figures = getattr(backend, "memory_figures", None)
    if figures is None:
        return None
    if backend.device.type != "cuda":
        return MemoryFigures(**figures, peak_allocated_bytes=None, peak_reserved_bytes=None)
    return MemoryFigures(**figures, peak_allocated_bytes=torch.cuda.max_memory_allocated(backend.device),
                         peak_reserved_bytes=torch.cuda.max_memory_reserved(backend.device))


@dataclass
class LatencyResult:
    model: str
    backend: str
    device: str
    dtype: str
    load_s: float
    ttft_prompt_tokens: int
    ttft_ms: float
    matmul_tflop_s: float
    ttft_floor_ms: float
    percent_of_ttft_floor: float
    decode_prompt_tokens: int
    decode_tokens: int
    decode_tokens_per_s: float
    copy_bandwidth_gb_s: float
    roofline_tokens_per_s: float
    percent_of_roofline: float
    tensor_parallel_size: int = 1   # with more, the floors and rooflines are one GPU's share, run on each at once
    memory: MemoryFigures | None = None
    workload: str = "random"        # the decode run's prompt: random tokens, or code-edit (bench/speculative.py)
    speculation: SpeculationFigures | None = None   # of the decode run, with speculative decoding on


@dataclass
class ThroughputResult:
    model: str
    backend: str
    device: str
    dtype: str
    workload: str
    sequences: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float
    output_tokens_per_s: float
    preemptions: int | None
    copy_bandwidth_gb_s: float
    roofline_s: float
    roofline_tokens_per_s: float
    percent_of_roofline: float
    hf_output_tokens_per_s: float | None = None   # filled by compare_with_hf
    ratio_to_hf: float | None = None
    tensor_parallel_size: int = 1
    memory: MemoryFigures | None = None
    speculation: SpeculationFigures | None = None


@dataclass
class SweepPoint:
    batch_size: int
    decode_tokens_per_s: float
    roofline_tokens_per_s: float


@dataclass
class SweepResult:
    model: str
    device: str
    dtype: str
    copy_bandwidth_gb_s: float
    points: list[SweepPoint] = field(default_factory=list)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


TTFT_RUNS = 5


def measure_latency(backend: Backend, limits: DeviceLimits, prompt_tokens: int = 128, new_tokens: int = 256,
                    ttft_prompt_tokens: int = 1024, seed: int = 0, decode_prompt: list[int] | None = None,
                    workload: str = "random") -> LatencyResult:
    """decode_prompt: the decode run's prompt (default: prompt_tokens random tokens), which `workload` names."""
    vocab = prompt_vocab(backend.vocab_size)
    backend.warm_up(random_prompts(1, 16, vocab, seed + 1)[0])
    # a first long prompt meets kernel and GEMM shapes the short warm-up did not; then the median of distinct
    # prompts (no prefix-cache hits), as one request's time moved by 10-15 ms between runs on an H100
    long_prompts = random_prompts(TTFT_RUNS + 1, ttft_prompt_tokens, vocab, seed + 2)
    backend.time_to_first_token_s(long_prompts[0])
    ttft_s = statistics.median(backend.time_to_first_token_s(p) for p in long_prompts[1:])
    decode_prompt = decode_prompt or random_prompts(1, prompt_tokens, vocab, seed)[0]
    prompt_tokens = len(decode_prompt)
    speculation = getattr(backend, "speculation", None)
    before = speculation() if speculation else None
    rate = backend.decode_tokens_per_s(decode_prompt, new_tokens)
    floor_s = prefill_floor_s(backend.shape, ttft_prompt_tokens, limits.matmul_tflop_s)
    roofline = decode_roofline(backend.shape, limits.copy_bandwidth_gb_s, [prompt_tokens], [new_tokens])
    return LatencyResult(backend.model, backend.name, str(backend.device), _dtype_name(backend.dtype),
                         backend.load_s, ttft_prompt_tokens, ttft_s * 1000, limits.matmul_tflop_s, floor_s * 1000,
                         percent(floor_s, ttft_s), prompt_tokens, new_tokens, rate, limits.copy_bandwidth_gb_s,
                         roofline.tokens_per_s, percent(rate, roofline.tokens_per_s), _degree(backend),
                         memory_figures(backend), workload, speculation(before) if speculation else None)


def measure_throughput(backend: Backend, limits: DeviceLimits, workload: Workload) -> ThroughputResult:
    backend.warm_up(workload.prompts[0][:16], workload.guidance)
    speculation = getattr(backend, "speculation", None)
    before = speculation() if speculation else None
    stats = backend.generate_all(workload)
    rate = stats.output_tokens / stats.elapsed_s
    roofline = decode_roofline(backend.shape, limits.copy_bandwidth_gb_s, [len(p) for p in workload.prompts],
                               workload.max_tokens)
    return ThroughputResult(backend.model, backend.name, str(backend.device), _dtype_name(backend.dtype),
                            workload.name, len(workload.prompts), sum(map(len, workload.prompts)),
                            stats.output_tokens, stats.elapsed_s, rate, stats.preemptions,
                            limits.copy_bandwidth_gb_s, roofline.seconds, roofline.tokens_per_s,
                            percent(rate, roofline.tokens_per_s), tensor_parallel_size=_degree(backend),
                            memory=memory_figures(backend), speculation=speculation(before) if speculation else None)


def _degree(backend) -> int:
    return getattr(backend, "tensor_parallel_size", 1)


def compare_with_hf(result: ThroughputResult, hf_result: ThroughputResult) -> ThroughputResult:
    result.hf_output_tokens_per_s = hf_result.output_tokens_per_s
    result.ratio_to_hf = result.output_tokens_per_s / hf_result.output_tokens_per_s
    return result


def measure_sweep(engine, limits: DeviceLimits, batch_sizes: list[int], prompt_tokens: int = 128,
                  new_tokens: int = 64, seed: int = 0) -> SweepResult:
    """Decode tokens/s of `engine` (an engine_backend.EngineBackend) at each batch size; every point has prompts of
    its own, so no point finds another's prompts in the prefix cache."""
    vocab = prompt_vocab(engine.vocab_size)
    engine.warm_up(random_prompts(1, 16, vocab, seed + 1)[0])
    result = SweepResult(engine.model, str(engine.device), _dtype_name(engine.dtype), limits.copy_bandwidth_gb_s)
    for batch_size in batch_sizes:
        prompts = random_prompts(batch_size, prompt_tokens, vocab, seed + 1000 + batch_size)
        rate = engine.batch_decode_tokens_per_s(prompts, new_tokens)
        roofline = decode_roofline(engine.shape, limits.copy_bandwidth_gb_s, [prompt_tokens] * batch_size,
                                   [new_tokens] * batch_size)
        result.points.append(SweepPoint(batch_size, rate, roofline.tokens_per_s))
    return result


def as_dict(result) -> dict:
    return asdict(result)
