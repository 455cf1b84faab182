"""Times the fused all-reduce's push GEMV + pulled norm (two simulated ranks, one GPU) at forced one-row tiles."""
import sys, json
from pathlib import Path
sys.path.insert(0, "scripts")
import torch
import gpu_peer_sum_check as chk
from gpu_common import open_gpu
import localllm.kernels.gemv as G

orig = G.gemv_config
forced = {}
def cfg(m, n, k, prologue=G.PROLOGUE_NONE):
    return forced.get(prologue) or orig(m, n, k, prologue)
G.gemv_config = cfg

open_gpu()
gen = torch.Generator(device="cuda").manual_seed(0)
out = {}
variants = {"o_proj": [(1, 4, 512), (1, 4, 1024), (1, 8, 512), (1, 2, 1024)],
            "down_proj": [(1, 8, 512), (1, 4, 1024), (1, 16, 512), (1, 4, 512)]}
for rnd in range(2):
    for name, tiles in variants.items():
        n, k, silu = chk.SHAPES[name]
        prologue = G.PROLOGUE_SILU_MUL if silu else G.PROLOGUE_NONE
        for t in (tiles if rnd == 0 else tiles[::-1]):
            forced.clear(); forced[prologue] = t
            r = {}
            chk.times(f"{name}{t}", n, k, silu, gen, r)
            out.setdefault(f"{name}{t}", []).append(next(iter(r.values())))
Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
