"""Hugging Face transformers as a `localllm bench` backend, the peer our engine is compared with: the same config
(random weights) or the same resolved model directory, the same dtype and device choice, the same prompts.
Latency goes through `generate`, throughput through transformers' continuous batching."""
from __future__ import annotations

import math
import time

import torch

from localllm.bench.measure import GenerateStats
from localllm.bench.models import BenchModel
from localllm.bench.roofline import model_shape
from localllm.bench.workloads import Workload
from localllm.sampling_params import Guidance

# tokens per KV block of transformers' continuous batching: the default of both 5.17 (block_size) and later
# versions (page_size), left unset since the name changed between them
CB_BLOCK_TOKENS = 256


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _TokenClock:
    """A generate() streamer that notes when each put() comes: the prompt first, then every new token once it is
    on the host (so after its step, on a GPU too)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class HFBackend:
    name = "hf"

    def __init__(self, bench_model: BenchModel, device: torch.device, dtype: torch.dtype,
                 max_batch_tokens: int):
        from transformers import AutoModelForCausalLM

        start = time.perf_counter()
        if bench_model.model_dir is None:
            with torch.device(device):
                self.hf_model = AutoModelForCausalLM.from_config(bench_model.hf_config, dtype=dtype)
        else:
            self.hf_model = AutoModelForCausalLM.from_pretrained(bench_model.model_dir, dtype=dtype,
                                                                 trust_remote_code=False).to(device)
        self.hf_model.eval()
        self.hf_model.generation_config.eos_token_id = None   # exactly the asked-for tokens, as ignore_eos does
        _sync(device)
        self.load_s = time.perf_counter() - start
        self.model, self.device, self.dtype = bench_model.name, device, dtype
        self.vocab_size = bench_model.hf_config.vocab_size
        self.shape = model_shape(self.hf_model, bench_model.hf_config, dtype.itemsize)
        self.max_batch_tokens = max_batch_tokens

    @torch.inference_mode()
    def _generate_s(self, prompt: list[int], new_tokens: int, clock: _TokenClock | None = None) -> float:
        """Seconds for exactly new_tokens greedy tokens (end of sequence disabled); `clock` notes each token."""
        ids = torch.tensor([prompt], device=self.device)
        _sync(self.device)
        start = time.perf_counter()
        # an explicit mask: otherwise generate() masks every prompt token equal to the pad id
        out = self.hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=new_tokens, pad_token_id=0, streamer=clock)
        _sync(self.device)
        elapsed = time.perf_counter() - start
        if out.shape[1] != len(prompt) + new_tokens:
            raise RuntimeError(f"generate() gave {out.shape[1] - len(prompt)} tokens instead of {new_tokens}")
        return elapsed

    def warm_up(self, prompt: list[int], guidance: Guidance | None = None) -> None:
        """guidance: refused before a run gets here (transformers' runs are never guided)."""
        self._generate_s(prompt, 4)

    def time_to_first_token_s(self, prompt: list[int]) -> float:
        return self._generate_s(prompt, 1)

    def decode_tokens_per_s(self, prompt: list[int], new_tokens: int) -> float:
        """Timed from the first token to the last as a streamer sees them arrive (the difference of a one-token
        and a whole run, timed apart, could come out negative on a busy machine)."""
        clock = _TokenClock()
        self._generate_s(prompt, new_tokens, clock)
        return (new_tokens - 1) / (clock.times[-1] - clock.times[-new_tokens])   # the last puts are the tokens

    def _cb_config(self, workload: Workload):
        from transformers import ContinuousBatchingConfig

        if self.device.type == "cuda":   # transformers sizes its KV cache from the free GPU memory
            return ContinuousBatchingConfig(max_batch_tokens=self.max_batch_tokens)
        # on CPU it would size it from the whole RAM: give it exactly what the workload needs
        blocks = sum(math.ceil((len(p) + m) / CB_BLOCK_TOKENS) for p, m in zip(workload.prompts, workload.max_tokens))
        return ContinuousBatchingConfig(num_blocks=blocks, max_batch_tokens=self.max_batch_tokens)

    # no_grad, not inference_mode: transformers 5.17 captures its CUDA graphs (and makes its cache) in this thread
    # but runs the generation loop in a thread of its own, outside inference mode, which may not update inference
    # tensors in place ("Inplace update to inference tensor outside InferenceMode is not allowed")
    @torch.no_grad()
    def generate_all(self, workload: Workload) -> GenerateStats:
        from transformers import GenerationConfig

        sampling = (dict(do_sample=True, temperature=workload.temperature, top_k=0, top_p=1.0)
                    if workload.temperature > 0 else dict(do_sample=False))
        generation_config = GenerationConfig(eos_token_id=-1, pad_token_id=0, **sampling)   # -1: no eos
        manager = self.hf_model.continuous_batching_context_manager(
            generation_config=generation_config, continuous_batching_config=self._cb_config(workload),
            block=True, timeout=10, warmup=self.device.type == "cuda")   # warm-up = CUDA graph capture
        with manager as cb:
            start = time.perf_counter()
            pending = {cb.add_request(prompt, request_id=f"bench-{i}", max_new_tokens=max_tokens, eos_token_id=-1)
                       for i, (prompt, max_tokens) in enumerate(zip(workload.prompts, workload.max_tokens))}
            output_tokens = 0
            while pending:
                result = cb.get_result(timeout=1)
                if result is None:
                    if not cb.is_running():
                        raise RuntimeError("transformers' continuous batching stopped before finishing")
                elif result.is_finished():
                    if result.error:
                        raise RuntimeError(f"transformers' continuous batching failed: {result.error}")
                    pending.discard(result.request_id)
                    output_tokens += len(result.generated_tokens)
            elapsed = time.perf_counter() - start
        return GenerateStats(output_tokens, elapsed, None)
