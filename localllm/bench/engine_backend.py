"""localllm's own engine as a `localllm bench` backend: prompts go straight into EngineCore, timed around its
steps (each step ends with the sampled tokens on the host, so wall-clock time is the device's time too)."""
from __future__ import annotations

import gc
import time

import torch

from localllm.bench.measure import GenerateStats
from localllm.bench.models import BenchModel
from localllm.bench.roofline import model_shape
from localllm.bench.speculative import SpeculationFigures
from localllm.bench.workloads import Workload
from localllm.sampling_params import Guidance, SamplingParams


def _file_bytes(bench_model: BenchModel, model, tp: int) -> int:
    """The size of the checkpoint's weight files; for random weights, of the tensor data of a GGUF holding them
    (blocks as they are, anything dense in float32, as GGUF files keep norms)."""
    if bench_model.model_dir is not None:
        gguf = bench_model.source_file
        files = [gguf] if gguf is not None else list(bench_model.model_dir.glob("*.safetensors"))
        return sum(f.stat().st_size for f in files)
    seen, total = set(), 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel() * (1 if param.dtype == torch.uint8 else 4)
    return total * tp


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=max_tokens)


class EngineBackend:
    name = "localllm"

    def __init__(self, bench_model: BenchModel, dtype: str, **config):
        from localllm.config import Config
        from localllm.engine.core import EngineCore
        from localllm.engine.kv_pool import SERVER_FRACTION

        start = time.perf_counter()
        # throughput is measured as a server runs: the KV pool fills what the GPU has left (server-style sizing)
        config.setdefault("gpu_memory_fraction", SERVER_FRACTION)
        self.core = EngineCore(Config(dtype=dtype, **config), bench_model.model_dir, bench_model.hf_config,
                               bench_model.eos_token_ids, tokenizer_dir=bench_model.tokenizer_dir)
        self.load_s = time.perf_counter() - start
        gc.freeze()   # as the engine process does once loaded: the model's objects stay out of later collections
        self.model = bench_model.name
        self.device, self.dtype, self.vocab_size = self.core.device, self.core.dtype, self.core.vocab_size
        self.tensor_parallel_size = self.core.tensor_parallel_size
        runner = self.core.runner
        self.shape = model_shape(runner.model, bench_model.hf_config, runner.kv_dtype.itemsize,
                                 self.tensor_parallel_size)
        self.memory_figures = dict(quantization=runner.quantization,
                                   weight_bytes=runner.weight_bytes * self.tensor_parallel_size,
                                   file_bytes=_file_bytes(bench_model, runner.model, self.tensor_parallel_size))
        self._request_count = 0

    def close(self) -> None:
        """Stops the tensor-parallel workers, if any."""
        self.core.shutdown()

    def speculation(self, since: SpeculationFigures | None = None) -> SpeculationFigures | None:
        """The verification counts so far, or since an earlier call's figures; None with speculation off."""
        speculator = self.core.speculator
        if speculator is None:
            return None
        stats = speculator.stats
        drafts, accepted, steps = stats.proposed, stats.accepted, stats.verify_steps
        if since is not None:
            drafts, accepted, steps = (drafts - since.draft_tokens, accepted - since.accepted_tokens,
                                       steps - since.verify_steps)
        config = self.core.config
        return SpeculationFigures.of(config.speculative, config.speculative_accept_prob, drafts, accepted, steps)

    def _add(self, prompt: list[int], params: SamplingParams) -> str:
        request_id = f"bench-{self._request_count}"
        self._request_count += 1
        self.core.add_request(request_id, prompt, params)
        return request_id

    def _run_to_completion(self) -> int:
        tokens = 0
        while self.core.has_unfinished:
            tokens += len(self.core.step())
        return tokens

    def warm_up(self, prompt: list[int], guidance: Guidance | None = None) -> None:
        """With guidance, also what a server does once, at its first guided request: reads the tokenizer for
        grammars and compiles the grammar (later requests with it compile while their prompts are computed)."""
        self._add(prompt, _greedy(4))
        if guidance is not None:
            self._add(prompt, SamplingParams(temperature=0.0, max_tokens=4, guidance=guidance))
        self._run_to_completion()

    def time_to_first_token_s(self, prompt: list[int]) -> float:
        start = time.perf_counter()
        self._add(prompt, _greedy(1))
        self._run_to_completion()
        return time.perf_counter() - start

    def batch_decode_tokens_per_s(self, prompts: list[list[int]], new_tokens: int) -> float:
        """All prompts at once; the clock starts when every sequence has its first token, so prefill (chunked,
        possibly mixed with early sequences' decoding) is not counted."""
        waiting = {self._add(prompt, _greedy(new_tokens)) for prompt in prompts}
        while waiting:
            waiting -= {event.request_id for event in self.core.step()}
        start = time.perf_counter()
        decoded = self._run_to_completion()
        return decoded / (time.perf_counter() - start)

    def decode_tokens_per_s(self, prompt: list[int], new_tokens: int) -> float:
        return self.batch_decode_tokens_per_s([prompt], new_tokens)

    def generate_all(self, workload: Workload) -> GenerateStats:
        preempted_before = self.core.scheduler.num_preemptions
        start = time.perf_counter()
        for prompt, max_tokens in zip(workload.prompts, workload.max_tokens):
            # a workload's grammar never lets a sequence end, as ignore_eos (which a grammar refuses) would not
            params = SamplingParams(temperature=workload.temperature, ignore_eos=workload.guidance is None,
                                    max_tokens=max_tokens, guidance=workload.guidance)
            self._add(prompt, params)
        output_tokens = self._run_to_completion()
        return GenerateStats(output_tokens, time.perf_counter() - start,
                             self.core.scheduler.num_preemptions - preempted_before)
