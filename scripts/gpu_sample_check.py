"""The step's token choice on a GPU (localllm.kernels.sample) against its plain-torch reference, and its time
against the sampler's torch path it replaces (softmax, cumulative sum, search), for 1 and 256 rows of a 151,936-token vocabulary;
greedy choice by pieces (kernels.sample.greedy_tokens) against torch's argmax, the same and timed.

    python scripts/gpu_sample_check.py

Checks: the same tokens as the reference for the same uniforms (float32 and bf16 logits; a draw may differ only
where its uniform falls within float rounding of a boundary between two tokens), and draws over a grid of uniforms
landing on each token in proportion to its probability. Times: triton.testing.do_bench medians, with the sampler's host work.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from triton.testing import do_bench

from localllm.engine.sampler import Sampler, SamplingRow
from localllm.kernels.sample import greedy_tokens, sample_tokens
from localllm.kernels.sample_ref import preferences, sample_tokens_ref
from localllm.sampling_params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import open_gpu  # noqa: E402

VOCAB = 151936


def agreement(rows: int, dtype: torch.dtype, gen: torch.Generator) -> tuple[int, int]:
    logits = (torch.randn(rows, VOCAB, generator=gen, device="cuda") * 4).to(dtype)
    temperature = torch.rand(rows, generator=gen, device="cuda") + 0.3
    temperature[::8] = 0.0
    uniforms = torch.rand(rows, generator=gen, device="cuda")
    same = sample_tokens(logits, temperature, uniforms) == sample_tokens_ref(logits, temperature, uniforms)
    return int(same.sum()), rows


def proportions_hold() -> bool:
    probs = torch.tensor([0.1, 0.3, 0.0, 0.4, 0.2], device="cuda")
    logits = probs.log().expand(1000, 5).contiguous()
    uniforms = (torch.arange(1000, device="cuda") + 0.5) / 1000
    counts = torch.bincount(sample_tokens(logits, torch.ones(1000, device="cuda"), uniforms), minlength=5)
    return counts.tolist() == [100, 300, 0, 400, 200]


def greedy_agreement(rows: int, dtype: torch.dtype, gen: torch.Generator) -> bool:
    """Greedy by pieces against argmax, with ties (a row's best repeated later, in another piece) and NaN."""
    logits = (torch.randn(rows, VOCAB, generator=gen, device="cuda") * 4).to(dtype)
    logits[::3, 7] = 100.0
    logits[::3, VOCAB - 5] = 100.0
    logits[1::3, ::11] = float("nan")
    return torch.equal(greedy_tokens(logits), preferences(logits).argmax(-1))


def greedy_time_us(rows: int, dtype: torch.dtype) -> tuple[float, float]:
    """greedy_tokens against the torch path it replaces (float32 copy, NaN handling, argmax)."""
    logits = torch.randn(rows, VOCAB, device="cuda").to(dtype)
    kernel = do_bench(lambda: greedy_tokens(logits), return_mode="median")
    torch_path = do_bench(lambda: preferences(logits).argmax(-1), return_mode="median")
    return kernel * 1e3, torch_path * 1e3


def time_us(rows: int, dtype: torch.dtype) -> tuple[float, float]:
    """The sampler's step with temperature-only rows (now the kernel) and its torch path, each with its host work."""
    from localllm.engine import sampler

    logits = torch.randn(rows, VOCAB, device="cuda").to(dtype)
    sampling_rows = [SamplingRow(SamplingParams(temperature=0.6), [], [], None) for _ in range(rows)]
    kernel = do_bench(lambda: Sampler.token_ids(logits, sampling_rows), return_mode="median")
    torch_path = do_bench(lambda: sampler._sample(logits.float(), sampling_rows), return_mode="median")
    return kernel * 1e3, torch_path * 1e3


def main() -> int:
    if not open_gpu():
        return 1
    gen = torch.Generator(device="cuda").manual_seed(0)
    greedy_gen = torch.Generator(device="cuda").manual_seed(1)
    failed = False
    for dtype in (torch.float32, torch.bfloat16):
        same, rows = agreement(512, dtype, gen)
        ok = same >= rows - 2
        failed |= not ok
        print(f"{'PASS' if ok else 'FAIL'}  {str(dtype):15s} tokens equal to the reference: {same}/{rows}")
        ok = all(greedy_agreement(rows, dtype, greedy_gen) for rows in (1, 7, 256))
        failed |= not ok
        print(f"{'PASS' if ok else 'FAIL'}  {str(dtype):15s} greedy by pieces equal to argmax at 1, 7, 256 rows")
    ok = proportions_hold()
    failed |= not ok
    print(f"{'PASS' if ok else 'FAIL'}  draws over a grid of uniforms follow the probabilities")
    print(f"{'rows':>5s} {'dtype':15s} {'kernel us':>10s} {'torch path us':>14s}")
    for rows in (1, 256):
        for dtype in (torch.float32, torch.bfloat16):
            kernel, torch_path = time_us(rows, dtype)
            print(f"{rows:5d} {str(dtype):15s} {kernel:10.1f} {torch_path:14.1f}")
            kernel, torch_path = greedy_time_us(rows, dtype)
            print(f"{rows:5d} {str(dtype):15s} {kernel:10.1f} {torch_path:14.1f}  greedy")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
