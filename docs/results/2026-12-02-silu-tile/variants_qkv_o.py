"""bench latency of one TP=N rank's share with the one-row GEMV's tile changed per kind of launch. argv[1]: variants
joined by '+': base; qbnN/qbkN/qwN (the RMSNorm-prologue launches: qkv), obnN/obkN/owN (no prologue, residual
epilogue: o). argv[2]: the degree; the rest goes to localllm."""
import re
import runpy
import sys

from localllm.kernels import gemv as g

knobs = {}
for variant in sys.argv[1].split("+"):
    name, num = re.fullmatch(r"([a-z]+)(\d*)", variant).groups()
    if name != "base":
        knobs[name] = int(num)

plain_gemv = g.gemv


def gemv(x, weight, bias=None, **kw):
    kind = "q" if kw.get("norm") is not None else "o" if not kw.get("silu_mul") and kw.get("residual") is not None \
        else None
    if kind and x.shape[0] == 1 and any(k.startswith(kind) for k in knobs):
        bm, bn, bk = g.gemv_config(x.shape[0], weight.shape[0], weight.shape[1])
        kw["config"] = (bm, knobs.get(kind + "bn", bn), knobs.get(kind + "bk", bk))
        if kind + "w" in knobs:
            kw["num_warps"] = knobs[kind + "w"]
    return plain_gemv(x, weight, bias, **kw)


g.gemv = gemv
sys.argv = ["scripts/gpu_tp_rank_share.py", *sys.argv[2:]]
runpy.run_path("scripts/gpu_tp_rank_share.py", run_name="__main__")
