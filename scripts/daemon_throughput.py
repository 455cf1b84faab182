"""`localllm bench throughput`'s streams workload sent through the daemon's OpenAI API, beside the same workload in
process: N concurrent /v1/completions requests of random prompt token ids (the bench's own prompts), greedy, ignoring
the end of sequence, each for exactly NEW tokens; output tokens/s from the first request sent to the last answer.

    python scripts/daemon_throughput.py [--model smollm2:135m] [--streams 16] [--new-tokens 64] [--runs 2]

Starts the daemon as `localllm run` does (where $LOCALLLM_HOST says) if none runs, with the model loaded first (the
load is not timed); a warm-up request goes before the timed runs. Then runs `localllm bench throughput` on the same
workload in this process, to compare (the model's vocabulary must hold the prompts' 10,000 ids). Leaves the daemon running (`localllm stop`)."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from localllm.bench.workloads import PROMPT_TOKEN_IDS, throughput_workload
from localllm.client import ensure_daemon


def run_once(client, model: str, prompts: list[list[int]], new_tokens: int) -> float:
    def one(prompt: list[int]) -> int:
        answer = client.completion(model, prompt, max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        return answer["usage"]["completion_tokens"]
    start = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        tokens = sum(pool.map(one, prompts))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    client = ensure_daemon(models=[args.model], timeout=300.0)
    rates = []
    for run in range(args.runs + 1):   # run 0 warms up
        # prompts of token ids below PROMPT_TOKEN_IDS, as the bench's; a new seed each run, or the prefix cache
        # would answer the prompts of the run before
        work = throughput_workload("streams", PROMPT_TOKEN_IDS, args.streams, args.prompt_tokens, args.new_tokens, seed=run)
        rate = run_once(client, args.model, work.prompts, args.new_tokens)
        if run:
            rates.append(rate)
            print(f"through the daemon, run {run}: {rate:.1f} output tok/s", flush=True)
    print(f"through the daemon: median {statistics.median(rates):.1f} output tok/s over {args.runs} runs")
    client.close()
    subprocess.run([sys.executable, "-m", "localllm", "bench", "throughput", "--model", args.model, "--streams",
                    str(args.streams), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens",
                    str(args.new_tokens)], check=True)


if __name__ == "__main__":
    main()
