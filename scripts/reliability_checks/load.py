"""Load: many concurrent streaming clients, each sending several requests one after the other; and random
mid-stream disconnects. Afterwards nothing may run and no KV block may be held."""
from __future__ import annotations

import asyncio
import random
import time

from reliability_checks.report import Section, percentile
from reliability_checks.server import EMBEDDED, LocalServer
from reliability_checks.streams import StreamResult, chat_body, stream_chat


def load(server: LocalServer, clients: int = 64, requests: int = 4, max_tokens: int = 32,
         command: str = "") -> Section:
    section = Section(f"load: {clients} streaming clients x {requests} requests", command)
    server.load()
    start = time.perf_counter()
    results = asyncio.run(_clients(server, clients, requests, max_tokens))
    wall = time.perf_counter() - start
    after = server.status()
    settle = server.wait_idle()
    incomplete = [r for r in results if not r.complete or r.tokens != max_tokens]
    ttfts = [r.ttft for r in results if r.ttft is not None]
    latencies = [r.latency for r in results if r.complete]
    section.figures.update({
        "requests": len(results), "max_tokens": max_tokens, "wall_s": round(wall, 2),
        "errors": sum(r.error is not None for r in results), "incomplete_streams": len(incomplete),
        "ttft_p50_s": _round(percentile(ttfts, 50)), "ttft_p99_s": _round(percentile(ttfts, 99)),
        "latency_p50_s": _round(percentile(latencies, 50)), "latency_p99_s": _round(percentile(latencies, 99)),
        "tokens_per_s": round(sum(r.tokens for r in results) / wall, 1),
        "kv_blocks_used_after": after["kv_blocks"]["used"], "running_after": after["running"],
        "waiting_after": after["waiting"], "s_until_idle": round(settle, 3),
    })
    section.check("0 errors", section.figures["errors"] == 0, _sample(results, lambda r: r.error))
    section.check("0 incomplete streams (each ends with finish_reason, [DONE] and max_tokens tokens)",
                  not incomplete, _sample(incomplete, lambda r: True))
    section.check("0 KV blocks used and 0 requests running afterwards",
                  after["kv_blocks"]["used"] == 0 and after["running"] == 0 and after["waiting"] == 0,
                  f"used {after['kv_blocks']['used']}, running {after['running']} right after the last stream")
    return section


async def _clients(server: LocalServer, clients: int, requests: int, max_tokens: int) -> list[StreamResult]:
    async def one_client(i: int) -> list[StreamResult]:
        out = []
        for j in range(requests):
            body = chat_body(EMBEDDED, f"Client {i}, request {j}: write one sentence about the sea.", max_tokens,
                             ignore_eos=True, temperature=0.8, seed=i * requests + j)
            out.append(await stream_chat(http, body))
        return out

    async with server.async_http(limits=_limits(clients)) as http:
        per_client = await asyncio.gather(*(one_client(i) for i in range(clients)))
    return [r for results in per_client for r in results]


def disconnects(server: LocalServer, clients: int = 20, seed: int = 0, command: str = "") -> Section:
    """Clients hang up after a random number of chunks; their KV blocks must be freed at once."""
    section = Section(f"faults: {clients} random mid-stream disconnects", command)
    server.load()
    rng = random.Random(seed)
    hang_ups = [rng.randint(1, 8) for _ in range(clients)]

    async def run() -> tuple[list[StreamResult], float]:
        async with server.async_http(limits=_limits(clients)) as http:
            results = await asyncio.gather(*(stream_chat(http, chat_body(
                EMBEDDED, f"Story {i}: once upon a time", 400, ignore_eos=True), hang_up_after=n)
                for i, n in enumerate(hang_ups)))
        return results, time.perf_counter()

    results, last_hang_up = asyncio.run(run())
    try:
        server.wait_idle(timeout=10)
        freed_after = time.perf_counter() - last_hang_up
    except TimeoutError:
        freed_after = None
    section.figures.update({"disconnected": sum(r.disconnected for r in results),
                            "hang_up_after_chunks": hang_ups,
                            "s_from_last_hang_up_until_0_blocks_0_running": _round(freed_after)})
    section.check("every client got its chunks before hanging up", all(r.disconnected for r in results),
                  _sample(results, lambda r: not r.disconnected))
    section.check("every block freed and nothing running within 10 s of the last hang-up", freed_after is not None,
                  str(server.status()["kv_blocks"]) if freed_after is None else "")
    return section


def _limits(clients: int):
    import httpx

    return httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _sample(results: list, bad) -> str:
    """A few of the results for which `bad` is truthy, for the report."""
    chosen = [r for r in results if bad(r)]
    return "" if not chosen else f"{len(chosen)}, e.g. {chosen[:3]}"
