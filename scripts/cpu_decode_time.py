"""Batch-1 decode of the embedded model on the CPU, timed two ways: wall-clock tokens/s, and the CPU time one
thread spends per decoded token (robust on a shared machine, where wall time depends on the neighbours).

    python scripts/cpu_decode_time.py --quantize fast --threads 1 --runs 4

Each run adds one request (a prompt of random token ids, greedy, ignore_eos), steps the engine until its first
token, then times the remaining new tokens; the medians over the runs are printed with the load average.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from localllm import LLM, SamplingParams


def one_run(core, run: int, prompt_tokens: int, new_tokens: int, vocab: int) -> tuple[float, float]:
    prompt = [random.Random(run).randrange(vocab) for _ in range(prompt_tokens)]
    core.add_request(f"run-{run}", prompt, SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=new_tokens))
    while not core.step():   # prefill, up to the first token
        pass
    wall, cpu, decoded = time.perf_counter(), time.thread_time(), 0
    while core.has_unfinished:
        decoded += len(core.step())
    return decoded / (time.perf_counter() - wall), (time.thread_time() - cpu) / decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantize", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(quantization=args.quantize, num_kv_blocks=64)
    core = llm.engine.core
    one_run(core, -1, 16, 4, core.vocab_size)   # warm-up
    results = [one_run(core, run, args.prompt_tokens, args.new_tokens, core.vocab_size) for run in range(args.runs)]
    rates, cpu = zip(*results)
    print(f"quantize={args.quantize} threads={args.threads} load={os.getloadavg()[0]:.2f}: "
          f"{statistics.median(rates):.1f} tok/s wall (runs {', '.join(f'{r:.1f}' for r in rates)}), "
          f"{1e3 * statistics.median(cpu):.1f} ms CPU per token on the stepping thread")
    llm.engine.shutdown()


if __name__ == "__main__":
    main()
