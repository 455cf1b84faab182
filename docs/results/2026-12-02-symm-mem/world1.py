"""localllm.layers.allreduce.SymmMemReducer at world size 1 on one GPU: does each path (one-shot, two-shot, group) run, in and out of a graph,
and give back the message (the sum over one rank)?"""
import sys, time
import torch
import torch.distributed as dist
from localllm.layers.parallel import init_tensor_parallel, create_store
from localllm.layers.allreduce import make_reducer, symm_mem_path

dev = torch.device("cuda", 0)
torch.cuda.set_device(dev)
store = create_store(1)
init_tensor_parallel(0, 1, dev, store)
print("torch", torch.__version__, "two_shot_out:", hasattr(torch.ops.symm_mem, "two_shot_all_reduce_out"))
try:
    r = make_reducer("symm_mem", dev, torch.bfloat16)
except Exception as e:
    print("make_reducer failed:", type(e).__name__, str(e)[:300]); sys.exit(0)
for kib in [8, 256, 264, 1024, 2048, 8192, 16384]:
    x = torch.randn(kib * 512, dtype=torch.bfloat16, device=dev)
    path = symm_mem_path(x.numel() * 2, r.buffer.numel() * 2, r.two_shot)
    try:
        y = r(x.clone().view(-1, 1024 if x.numel() % 1024 == 0 else 1))
        ok = torch.equal(y.view(-1), x)
        g = torch.cuda.CUDAGraph()
        src = x.clone()
        with torch.cuda.graph(g):
            for _ in range(20):
                out = r(src.clone())
        g.replay(); torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20): g.replay()
        torch.cuda.synchronize()
        us = (time.perf_counter() - t0) / 400 * 1e6
        print(f"{kib:6d} KiB {path:9s} eager_equal={ok} graph_equal={torch.equal(out.view(-1), x)} {us:.1f} us/call")
    except Exception as e:
        print(f"{kib:6d} KiB {path:9s} FAILED {type(e).__name__}: {str(e)[:300]}")
