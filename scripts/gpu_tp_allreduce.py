"""All-reduce latency on N GPUs inside a CUDA graph, through localllm's own reducers: nccl, and symm_mem (one-shot
up to 256 KiB, two-shot above, for the large messages of full-batch steps: 256 rows of the 8B model are 2 MiB, of
the 70B 4 MiB, a 1,024-token prefill chunk of the 8B 8 MiB), and the share of a batch-1 decode step it takes: per
token a Llama does 2 all-reduces per layer plus 1 in the embedding, each of hidden_size bf16 values; the step time
comes from `bench latency --tp N` JSON of the same degree. NCCL's protocol and channels are its own choice unless
NCCL_PROTO or NCCL_MIN_NCHANNELS are set (the report lists every NCCL_ variable it ran with).

    python scripts/gpu_tp_allreduce.py --world-size 2 --latency-json 8b=lat-8b-tp2.json \\
        --latency-json 70b=lat-70b-tp2.json --json-out allreduce.json
"""
from __future__ import annotations

import argparse
import json
import socket

import torch
import torch.multiprocessing as mp

SIZES_KIB = [8, 16, 64, 128, 1024, 2048, 4096, 8192]
OPS_PER_GRAPH = 100
REPLAYS = 20
MODELS = {"8b": (32, 4096), "70b": (80, 8192)}   # layers, hidden size


def _measure(rank: int, world_size: int, port: int, results: dict) -> None:
    from localllm.layers.allreduce import make_reducer, symm_mem_unavailable_reason
    import torch.distributed as dist

    from localllm.layers.parallel import all_reduce, init_tensor_parallel, use_reducer

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=rank == 0)
    init_tensor_parallel(rank, world_size, device, store)
    out = {}
    for kind in ("nccl", "symm_mem"):
        if kind != "nccl" and symm_mem_unavailable_reason(device):
            out[kind] = {"unavailable": symm_mem_unavailable_reason(device)}
            continue
        use_reducer(make_reducer(kind, device, torch.bfloat16))
        out[kind] = {}
        for kib in SIZES_KIB:
            x = torch.ones(kib * 1024 // 2, dtype=torch.bfloat16, device=device)
            for _ in range(3):
                y = all_reduce(x.clone())   # warm-up outside the graph
            assert float(y[0]) == world_size
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(OPS_PER_GRAPH):
                    y = all_reduce(x.clone())
            graph.replay()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(REPLAYS):
                graph.replay()
            end.record()
            end.synchronize()
            out[kind][kib] = start.elapsed_time(end) * 1000 / (REPLAYS * OPS_PER_GRAPH)   # us, clone included
    if rank == 0:
        results.update(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency-json", action="append", default=[], metavar="MODEL=FILE")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--json-out")
    args = p.parse_args()
    import os

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    with mp.Manager() as manager:
        results = manager.dict()
        port = _free_port()
        mp.spawn(_rank_main, args=(args.world_size, port, results), nprocs=args.world_size)
        latency_us = dict(results)
    nccl_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")}
    report = {"world_size": args.world_size, "nccl_env": nccl_env, "allreduce_us_in_graph": latency_us,
              "decode_share": {}}
    for item in args.latency_json:
        name, _, path = item.partition("=")
        layers, hidden = MODELS[name]
        step_us = 1e6 / json.loads(open(path).read())["decode_tokens_per_s"]
        kib = hidden * 2 // 1024
        for kind, table in latency_us.items():
            if kib in table:
                spent = (2 * layers + 1) * table[kib]
                report["decode_share"][f"{name}/{kind}"] = {"allreduces": 2 * layers + 1, "message_kib": kib,
                                                           "allreduce_us": spent, "step_us": step_us,
                                                           "share": spent / step_us}
    print(json.dumps(report, indent=2))
    if args.json_out:
        open(args.json_out, "w").write(json.dumps(report, indent=2) + "\n")


def _rank_main(rank: int, world_size: int, port: int, results) -> None:
    _measure(rank, world_size, port, results)


if __name__ == "__main__":
    main()
