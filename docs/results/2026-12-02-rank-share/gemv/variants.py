"""bench latency with the bf16 GEMV's launch changed. argv[1]: variants joined by '+' (base, all = every dense
projection through the GEMV, bk1024, bn2, bn8, w8, w2, st3); the rest goes to ../share/variants.py (its @tp2 configs)."""
import re
import runpy
import sys

from localllm.kernels import gemv as g
from localllm.layers import linear

plain_config = g.gemv_config
knobs = {}
for variant in sys.argv[1].split("+"):
    name, num = re.fullmatch(r"([a-z]+)(\d*)", variant).groups()
    if name == "all":
        linear.FUSED_GEMV_MAX_BYTES = 1 << 40
    elif name in ("bk", "bn"):
        knobs[name] = int(num)
    elif name == "w":
        knobs["num_warps"] = int(num)
    elif name == "st":
        knobs["num_stages"] = int(num)


def config(m, n, k):
    bm, bn, bk = plain_config(m, n, k)
    bn = knobs.get("bn", bn)
    bk = min(knobs.get("bk", bk), 1 << (k - 1).bit_length())
    return bm, bn, bk


g.gemv_config = config


class Launch:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        extra = {k: v for k, v in knobs.items() if k in ("num_warps", "num_stages")}
        return lambda *a, **k: launch(*a, **{**k, **extra})


g._gemv_kernel = Launch(g._gemv_kernel)
sys.argv = ["docs/results/2026-12-02-rank-share/share/variants.py", *sys.argv[2:]]
runpy.run_path("docs/results/2026-12-02-rank-share/share/variants.py", run_name="__main__")
