"""All-reduce latency on N GPUs inside a CUDA graph, through localllm's own reducers (nccl, symm_mem) and torch's
two-shot symmetric-memory all-reduce (a candidate for the large messages of full-batch steps: 256 rows of the 8B
model are 2 MiB, of the 70B 4 MiB, a 1,024-token prefill chunk of the 8B 8 MiB), and the share of a batch-1 decode
step it takes: per token a Llama does 2 all-reduces per layer plus 1 in the embedding, each of hidden_size bf16
values; the step time comes from `bench latency --tp N` JSON of the same degree. NCCL's protocol is its own choice
unless NCCL_PROTO is set.

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
    for kind in ("nccl", "symm_mem", "symm_mem_two_shot"):
        if kind != "nccl" and symm_mem_unavailable_reason(device):
            out[kind] = {"unavailable": symm_mem_unavailable_reason(device)}
            continue
        if kind == "symm_mem_two_shot" and not hasattr(torch.ops.symm_mem, "two_shot_all_reduce_"):
            out[kind] = {"unavailable": "this torch has no symm_mem.two_shot_all_reduce_"}
            continue
        use_reducer(TwoShotReducer(device, max(SIZES_KIB) << 10) if kind == "symm_mem_two_shot"
                    else make_reducer(kind, device, torch.bfloat16))
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


class TwoShotReducer:
    """torch's two-shot all-reduce (a reduce-scatter and an all-gather through the peers' symmetric buffers), in
    place in its buffer, for messages up to max_bytes of bf16."""

    def __init__(self, device: torch.device, max_bytes: int):
        import torch.distributed as dist
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = dist.group.WORLD.group_name
        self.buffer = symm_mem.empty(max_bytes // 2, dtype=torch.bfloat16, device=device)
        self.handle = symm_mem.rendezvous(self.buffer, self.group_name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        staged = self.buffer[:x.numel()]
        staged.copy_(x.view(-1))
        torch.ops.symm_mem.two_shot_all_reduce_(staged, "sum", self.group_name)
        return staged.view(x.shape)


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
    report = {"world_size": args.world_size, "allreduce_us_in_graph": latency_us, "decode_share": {}}
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
