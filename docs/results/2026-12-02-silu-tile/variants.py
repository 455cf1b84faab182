"""bench latency of one TP=2 rank's share with the down projection's GEMV launch changed. argv[1]: variants joined
by '+': base; mxN (FUSED_GEMV_MAX_BYTES = N MB: 60 sends the share's down, 58.7 MB, through the GEMV as the fused
all-reduce does); dbnN / dbkN / dwN (rows a tile, columns a step, warps of the SiLU-prologue GEMV launches)."""
import re
import runpy
import sys

from localllm.kernels import gemv as g
from localllm.layers import linear

knobs = {}
for variant in sys.argv[1].split("+"):
    name, num = re.fullmatch(r"([a-z]+)(\d*)", variant).groups()
    if name == "mx":
        linear.FUSED_GEMV_MAX_BYTES = int(num) << 20
    elif name == "dmx":
        linear.DOWN_GEMV_MAX_BYTES = int(num) << 20
    elif name in ("dbn", "dbk", "dw"):
        knobs[name] = int(num)

plain_gemv = g.gemv


def gemv(x, weight, bias=None, **kw):
    if kw.get("silu_mul") and knobs:
        bm, bn, bk = g.gemv_config(x.shape[0], weight.shape[0], weight.shape[1])
        kw["config"] = (bm, knobs.get("dbn", bn), knobs.get("dbk", bk))
        if "dw" in knobs:
            kw["num_warps"] = knobs["dw"]
    return plain_gemv(x, weight, bias, **kw)


g.gemv = gemv
sys.argv = ["scripts/gpu_tp_rank_share.py", *sys.argv[2:]]
runpy.run_path("scripts/gpu_tp_rank_share.py", run_name="__main__")
