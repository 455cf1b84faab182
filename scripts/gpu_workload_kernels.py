"""Where the device's time goes over a throughput workload: every kernel's total time (CUDA graphs included) under
torch's profiler, while the engine runs nano-vllm's workload on a random-weight model, beside the run's wall time
(the difference is the device waiting for the host).

    python scripts/gpu_workload_kernels.py [--random-weights qwen3-0.6b] [--top 30]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from localllm.bench.engine_backend import EngineBackend
from localllm.bench.models import open_bench_model
from localllm.bench.workloads import nano_vllm_workload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--random-weights", default="qwen3-0.6b")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    backend = EngineBackend(open_bench_model(None, args.random_weights), "bfloat16", max_num_seqs=256,
                            max_model_len=4096)
    workload = nano_vllm_workload()
    backend.warm_up(workload.prompts[0][:16])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        stats = backend.generate_all(workload)
        torch.cuda.synchronize()
    print(f"elapsed {stats.elapsed_s:.3f} s, {stats.output_tokens / stats.elapsed_s:.0f} tok/s (under the profiler)")
    kernels = profiler.key_averages()
    print(f"kernel time total {sum(k.device_time_total for k in kernels) / 1e6:.3f} s")
    for kernel in sorted(kernels, key=lambda k: k.device_time_total, reverse=True)[:args.top]:
        print(f"{kernel.device_time_total / 1e6:8.3f} s {kernel.count:8d} {kernel.key[:110]}")


if __name__ == "__main__":
    main()
