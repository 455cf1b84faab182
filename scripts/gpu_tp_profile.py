"""Where a batch-1 decode step's time goes with tensor parallelism: rank 0's kernels (CUDA graphs included) under
torch's profiler, for a random-weight model at a given degree. Prints the kernel table and writes a Chrome trace.

    python scripts/gpu_tp_profile.py --random-weights llama-3.1-8b --tp 2 --steps 20 --trace trace.json
    python scripts/gpu_tp_profile.py --random-weights llama-3.1-8b --tp 1 --quantize q4_k_m [--no-pdl]

--no-pdl launches every kernel plainly (kernels.pdl.ENABLED), so that each kernel's time is its own: with dependent
launches a kernel's time includes its wait for the one before.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from localllm.bench.engine_backend import EngineBackend
from localllm.bench.models import open_bench_model
from localllm.kernels import pdl
from localllm.sampling_params import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--random-weights", default="llama-3.1-8b")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--allreduce", default="nccl")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quantize", default="none", help="e.g. q4_k_m: the weights kept in that format")
    parser.add_argument("--trace")
    parser.add_argument("--no-pdl", action="store_true", help="no programmatic dependent launch")
    args = parser.parse_args()
    if args.no_pdl and args.tp > 1:
        parser.error("--no-pdl takes --tp 1: the other ranks run in processes of their own")
    pdl.ENABLED = not args.no_pdl
    backend = EngineBackend(open_bench_model(None, args.random_weights), "bfloat16", tensor_parallel_size=args.tp,
                            tp_allreduce=args.allreduce, quantization=args.quantize)
    core = backend.core
    prompt = list(range(100, 228))
    backend.warm_up(prompt)
    core.add_request("p", prompt, SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=args.steps + 40))
    for _ in range(20):   # past the prefill, into steady decoding
        core.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            core.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    print(f"tp={args.tp} allreduce={args.allreduce}: {wall / args.steps * 1e3:.3f} ms per step (wall)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    if args.trace:
        prof.export_chrome_trace(args.trace)
    while core.has_unfinished:
        core.step()
    backend.close()


if __name__ == "__main__":
    main()
