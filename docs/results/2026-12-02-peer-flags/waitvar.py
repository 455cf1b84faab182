"""The pulled norm's wait, two ways (timing + the check's sums): python waitvar.py VARIANT OUT"""
import sys, json
from pathlib import Path
sys.path.insert(0, "scripts")
import torch, triton
import triton.language as tl
import gpu_peer_sum_check as chk
from gpu_common import open_gpu
import localllm.kernels.rmsnorm as R
from localllm.kernels.peer_sum import TIMEOUT_NS, _trap


@triton.jit
def _behind_acq(flags_ptr, offs, programs, want):
    seen = tl.atomic_add(flags_ptr + offs, 0, mask=offs < programs, sem="acquire", scope="sys")
    return tl.sum(((seen != want) & (offs < programs)).to(tl.int32), 0)


@triton.jit
def wait_acq(slots_ptr, flags_ptr, abandon_ptr, programs, WIDTH_WORDS, RANK: tl.constexpr,
             WORLD: tl.constexpr, BLOCK_P: tl.constexpr, ON_GPU: tl.constexpr):
    want = tl.load(flags_ptr + RANK * WIDTH_WORDS)
    offs = tl.arange(0, BLOCK_P)
    start = tl.extra.cuda.globaltimer()
    for r in tl.static_range(WORLD):
        if r != RANK:
            behind = _behind_acq(flags_ptr + r * WIDTH_WORDS, offs, programs, want)
            while (behind > 0) & (tl.load(abandon_ptr, volatile=True) == 0):
                if tl.extra.cuda.globaltimer() - start > TIMEOUT_NS:
                    behind = _trap(behind)
                behind = _behind_acq(flags_ptr + r * WIDTH_WORDS, offs, programs, want)
    return slots_ptr


if sys.argv[1] == "acq":
    R.wait_for_peers = wait_acq
open_gpu()
gen = torch.Generator(device="cuda").manual_seed(0)
out = {}
ok = all(chk.check_sums(name, *shape, gen, {}) for name, shape in chk.SHAPES.items())
for rnd in range(3):
    for name in ("o_proj", "down_proj"):
        r = {}
        chk.times(f"{sys.argv[1]}:{name}", *chk.SHAPES[name], gen, r)
        out.setdefault(name, []).append(next(iter(r.values())))
out["sums_ok"] = ok
Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
