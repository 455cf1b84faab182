"""Batch-1 decode speed of engine processes sharing the CPU: N engine processes (started as the daemon starts them)
decode at the same time, optionally beside busy-looping processes. Each round, every engine decodes one greedy
request (64-token prompt, --new-tokens tokens, ignore_eos); its speed is (tokens - 1) / (last token - first token).
Prints the median over the rounds of each engine's speed.

    python scripts/cpu_sharing.py --engines 2 --rounds 5
    python scripts/cpu_sharing.py --engines 1 --busy 1 --rounds 5
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time

from localllm.config import Config
from localllm.sampling_params import SamplingParams
from localllm.server.engine_client import EngineClient

PROMPT = [(17 * i) % 1000 + 100 for i in range(64)]


def _spin() -> None:
    while True:
        pass


async def _decode_speed(client: EngineClient, new_tokens: int) -> float:
    queue: asyncio.Queue = asyncio.Queue()
    client.submit(PROMPT, SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True), queue)
    times = []
    while True:
        _, delta = await queue.get()
        times += [time.perf_counter()] * len(delta.token_ids)
        if delta.finish_reason is not None:
            return (len(times) - 1) / (times[-1] - times[0])


async def main(args) -> None:
    config = Config(model=args.model, num_kv_blocks=64, num_threads=args.num_threads or None)
    clients = [EngineClient(f"engine-{i}", config) for i in range(args.engines)]
    for client in clients:
        await client.start()
    busy = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for process in busy:
        process.start()
    try:
        await asyncio.gather(*(_decode_speed(c, 8) for c in clients))   # warm-up
        speeds = [[] for _ in clients]
        for _ in range(args.rounds):
            for i, speed in enumerate(await asyncio.gather(*(_decode_speed(c, args.new_tokens) for c in clients))):
                speeds[i].append(speed)
            print("round:", ", ".join(f"{runs[-1]:.1f}" for runs in speeds), "tok/s", flush=True)
    finally:
        for process in busy:
            process.kill()
        for client in clients:
            await client.stop()
    load = os.getloadavg()[0]
    for i, runs in enumerate(speeds):
        print(f"engine {i}: median {statistics.median(runs):.1f} tok/s over {len(runs)} rounds "
              f"({', '.join(f'{s:.1f}' for s in runs)}); engines {args.engines}, busy {args.busy}, load {load:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--engines", type=int, default=1)
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes beside the engines")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--num-threads", type=int, default=0, help="the engine option; 0 = the engine's default")
    asyncio.run(main(parser.parse_args()))
