"""The fused all-reduce's kernels (kernels/peer_sum.py) on one GPU, its ranks simulated by exchange buffers of the
same device (a peer's buffer is reached by a word offset, as through symmetric memory):

  1. every rank's pushing GEMV, then every rank's pulling RMSNorm, at Llama-3.1-8B's row-parallel shapes split over
     two ranks, over several steps: each rank's residual equals the sum of the ranks' partials (each as the plain
     GEMV rounds it) rounded once, on every rank, and every program's flags count the steps;
  2. the ranks on two streams, one held back by a sleep so that the other rank's norm has to wait for it (and, if it
     did not see the late rank, is released by the abandon word after 10 s);
  3. times inside CUDA graphs: two ranks' push + pull against two plain GEMVs + RMSNorms (what the kernels add,
     without the NVLink hop).

    python scripts/gpu_peer_sum_check.py [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import graph_time_us, open_gpu  # noqa: E402

SHAPES = {"o_proj": (4096, 2048, False), "down_proj": (4096, 7168, True)}   # N, K per rank, SiLU-and-mul
WORLD = 2


def rank_sites(width: int):
    from localllm.layers.peer_exchange import buffer_words, make_sites

    buffers = [torch.zeros(buffer_words([width, width], WORLD), device="cuda") for _ in range(WORLD)]
    abandon = torch.zeros(1, dtype=torch.int32, device="cuda")
    sites = []
    for own in buffers:
        deltas = torch.tensor([(b.data_ptr() - own.data_ptr()) // 4 for b in buffers], dtype=torch.int64,
                              device="cuda")
        sites.append(make_sites(own, [width, width], len(sites), deltas, abandon))
    return buffers, sites


def inputs(n: int, k: int, silu: bool, gen: torch.Generator):
    xs = [torch.randn(1, 2 * k if silu else k, device="cuda", generator=gen).bfloat16() for _ in range(WORLD)]
    ws = [(torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).bfloat16() for _ in range(WORLD)]
    residual = torch.randn(1, n, device="cuda", generator=gen).bfloat16()
    return xs, ws, residual


def push(rank, xs, ws, stream_residual, site, silu) -> int:
    """Rank `rank`'s pushing GEMV; returns how many programs signal the site."""
    from localllm.kernels.gemv import gemv

    return gemv(xs[rank], ws[rank], silu_mul=silu, residual=stream_residual if rank == 0 else None, push=site)


def check_sums(name: str, n: int, k: int, silu: bool, gen: torch.Generator, results: dict) -> bool:
    from localllm.kernels.gemv import gemv
    from localllm.kernels.rmsnorm import pulled_rms_norm
    from localllm.layers.peer_exchange import flag_words

    buffers, sites = rank_sites(n)
    norm_w = torch.rand(n, device="cuda", generator=gen).bfloat16() + 0.5
    ok = True
    for step in range(1, 4):
        for s in range(2):
            xs, ws, residual = inputs(n, k, silu, gen)
            streams = [residual.clone() for _ in range(WORLD)]
            pushed = [push(rank, xs, ws, streams[rank], sites[rank][s], silu) for rank in range(WORLD)]
            outs = [pulled_rms_norm(sites[rank][s], pushed[rank], norm_w, 1e-5, streams[rank])
                    for rank in range(WORLD)]
            parts = [gemv(xs[r], ws[r], silu_mul=silu).float() for r in range(WORLD)]
            want = ((parts[0] + residual.float()) + parts[1]).bfloat16()
            start = s * (flag_words(n, WORLD) + WORLD * n)
            flags = [b.view(torch.int32)[start:start + WORLD * n].view(WORLD, n)[:, :pushed[0]] for b in buffers]
            ok &= all(torch.equal(o[1], want) for o in outs) and torch.equal(outs[0][0], outs[1][0])
            ok &= pushed[0] == pushed[1] and all(bool((f == step).all()) for f in flags)
    results[f"sums_{name}"] = ok
    print(f"{'PASS' if ok else 'FAIL'}  {name}: every rank's residual is the ranks' sum rounded once, 3 steps x 2 "
          "sites, every program's flags count the steps", flush=True)
    return ok


def _finish_or_abandon(streams, abandon: torch.Tensor, seconds: float, side: torch.cuda.Stream,
                       one: torch.Tensor) -> bool:
    """Whether the streams finish within `seconds`; if not, the abandon word is set from `one` (pinned) on stream
    `side` (both made before anything waits), as the watchdog sets it when a rank dies, and they are waited for
    again."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(s.query() for s in streams):
            return True
        time.sleep(0.01)
    with torch.cuda.stream(side):
        abandon.copy_(one, non_blocking=True)
    torch.cuda.synchronize()
    return False


def check_waits(n: int, k: int, gen: torch.Generator, results: dict, late: int) -> bool:
    """Rank 0 on one stream runs push and pull while rank `late`'s stream, launched second, sleeps first: the other
    rank's norm must wait for it (released by the abandon word if it never sees the late rank's flag)."""
    from localllm.kernels.rmsnorm import pulled_rms_norm

    buffers, sites = rank_sites(n)
    xs, ws, residual = inputs(n, k, False, gen)
    norm_w = torch.ones(n, device="cuda").bfloat16()
    streams = [torch.cuda.Stream() for _ in range(WORLD)]
    residuals = [residual.clone() for _ in range(WORLD)]
    outs = [None] * WORLD
    # loaded before anything waits: CUDA loads a kernel's module lazily, at its first launch, and a load waits for
    # the GPU to go idle, which a rank simulated on the same GPU and host would never let it do
    torch.cuda._sleep(1)
    side, one = torch.cuda.Stream(), torch.ones(1, dtype=torch.int32).pin_memory()
    torch.cuda.synchronize()
    for rank in sorted(range(WORLD), key=lambda r: r == late):
        with torch.cuda.stream(streams[rank]):
            if rank == late:
                torch.cuda._sleep(100_000_000)   # ~50 ms: the other rank arrives first and waits
            pushed = push(rank, xs, ws, residuals[rank], sites[rank][0], False)
            outs[rank] = pulled_rms_norm(sites[rank][0], pushed, norm_w, 1e-5, residuals[rank])
    finished = _finish_or_abandon(streams, sites[0][0].abandon, 10.0, side, one)
    ok = finished and torch.equal(residuals[0], residuals[1]) and torch.equal(outs[0][0], outs[1][0])
    ok &= not torch.equal(residuals[0], residual)
    flags = [b.view(torch.int32)[:WORLD * n].view(WORLD, n)[:, 0].tolist() for b in buffers]   # program 0's
    results[f"waits_for_late_rank_{late}"] = {"ok": ok, "finished": finished, "flags": flags}
    print(f"{'PASS' if ok else 'FAIL'}  a rank that arrives first waits for rank {late} (two streams)"
          + ("" if finished else f": still waiting after 10 s (flags {flags}), released by the abandon word"),
          flush=True)
    return ok


def times(name: str, n: int, k: int, silu: bool, gen: torch.Generator, results: dict) -> None:
    from localllm.kernels.gemv import gemv
    from localllm.kernels.rmsnorm import pulled_rms_norm, rms_norm

    _, sites = rank_sites(n)
    xs, ws, residual = inputs(n, k, silu, gen)
    norm_w = torch.ones(n, device="cuda").bfloat16()
    streams = [residual.clone() for _ in range(WORLD)]

    def fused():
        pushed = [push(rank, xs, ws, streams[rank], sites[rank][0], silu) for rank in range(WORLD)]
        for rank in range(WORLD):
            pulled_rms_norm(sites[rank][0], pushed[rank], norm_w, 1e-5, streams[rank])

    def plain():
        for rank in range(WORLD):
            gemv(xs[rank], ws[rank], silu_mul=silu, residual=streams[rank], out=streams[rank])
        for rank in range(WORLD):
            rms_norm(streams[rank], norm_w, 1e-5)

    fused_us, plain_us = graph_time_us(fused), graph_time_us(plain)
    results[f"time_{name}"] = {"push_pull_us": fused_us, "gemv_norm_us": plain_us}
    print(f"time  {name} x2 ranks: push GEMV + pulled norm {fused_us:.1f} us, plain GEMV + norm {plain_us:.1f} us",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    if not open_gpu():
        sys.exit(1)
    gen = torch.Generator(device="cuda").manual_seed(0)
    results: dict = {}
    ok = all([check_sums(name, *shape, gen, results) for name, shape in SHAPES.items()])
    ok &= all([check_waits(*SHAPES["o_proj"][:2], gen, results, late) for late in range(WORLD)])
    for name, shape in SHAPES.items():
        times(name, *shape, gen, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
