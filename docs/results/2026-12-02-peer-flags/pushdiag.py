"""Where the fused all-reduce's per-site cost goes (diagnostic variants, timing only): python pushdiag.py VARIANT OUT"""
import sys, json
from pathlib import Path
sys.path.insert(0, "scripts")
import torch, triton
import triton.language as tl
import gpu_peer_sum_check as chk
from gpu_common import open_gpu
import localllm.kernels.gemv as G
import localllm.kernels.rmsnorm as R
import localllm.kernels.peer_sum as P

variant = sys.argv[1]

@triton.jit
def signal_relaxed_gpu(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    tl.debug_barrier()
    done = tl.atomic_add(arrivals_ptr, 1, sem="relaxed", scope="gpu") + 1
    grid = tl.num_programs(0)
    if done % grid == 0:
        count = (done // grid).to(tl.int32)
        for r in tl.static_range(WORLD):
            tl.atomic_xchg(flags_ptr + RANK + tl.load(deltas_ptr + r), count, sem="release", scope="sys")


@triton.jit
def signal_acqrel_gpu(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    tl.debug_barrier()
    done = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="gpu") + 1
    grid = tl.num_programs(0)
    if done % grid == 0:
        count = (done // grid).to(tl.int32)
        for r in tl.static_range(WORLD):
            tl.atomic_xchg(flags_ptr + RANK + tl.load(deltas_ptr + r), count, sem="release", scope="sys")


@triton.jit
def signal_no_barrier(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    done = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="sys") + 1
    grid = tl.num_programs(0)
    if done % grid == 0:
        count = (done // grid).to(tl.int32)
        for r in tl.static_range(WORLD):
            tl.atomic_xchg(flags_ptr + RANK + tl.load(deltas_ptr + r), count, sem="release", scope="sys")



@triton.jit
def signal_perprog(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    tl.debug_barrier()
    pid = tl.program_id(0)
    for r in tl.static_range(WORLD):
        tl.atomic_xchg(flags_ptr + 64 + pid * WORLD + RANK + tl.load(deltas_ptr + r), pid + 1, sem="release",
                       scope="sys")


@triton.jit
def signal_perprog_relaxed(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    tl.debug_barrier()
    pid = tl.program_id(0)
    for r in tl.static_range(WORLD):
        tl.atomic_xchg(flags_ptr + 64 + pid * WORLD + RANK + tl.load(deltas_ptr + r), pid + 1, sem="relaxed",
                       scope="gpu")


@triton.jit
def signal_count_only(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    tl.debug_barrier()
    tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="sys")



@triton.jit
def _fence_sys(x):
    return tl.inline_asm_elementwise("fence.acq_rel.sys; mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def signal_A(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    tl.debug_barrier()
    done = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="gpu") + 1
    grid = tl.num_programs(0)
    if done % grid == 0:
        count = _fence_sys((done // grid).to(tl.int32))
        for r in tl.static_range(WORLD):
            tl.atomic_xchg(flags_ptr + RANK + tl.load(deltas_ptr + r), count, sem="relaxed", scope="sys")


@triton.jit
def signal_C(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    tl.debug_barrier()
    done = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="sys") + 1
    grid = tl.num_programs(0)
    if done % grid == 0:
        count = _fence_sys((done // grid).to(tl.int32))
        for r in tl.static_range(WORLD):
            tl.atomic_xchg(flags_ptr + RANK + tl.load(deltas_ptr + r), count, sem="relaxed", scope="sys")


@triton.jit
def signal_D(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    tl.debug_barrier()
    pid = tl.program_id(0)
    v = _fence_sys(pid + 1)
    for r in tl.static_range(WORLD):
        tl.atomic_xchg(flags_ptr + 64 + pid * WORLD + RANK + tl.load(deltas_ptr + r), v, sem="relaxed", scope="sys")


@triton.jit
def push_own(slots_ptr, deltas_ptr, cols, values, mask, RANK: tl.constexpr, WORLD: tl.constexpr, WIDTH_WORDS):
    tl.store(slots_ptr + RANK * WIDTH_WORDS + cols, values, mask=mask)

@triton.jit
def no_wait(flags_ptr, abandon_ptr, RANK: tl.constexpr, WORLD: tl.constexpr, TIMEOUT: tl.constexpr):
    pass

@triton.jit
def no_signal(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    pass

if variant == "relaxed_gpu":
    G.signal_peers = signal_relaxed_gpu
elif variant == "acqrel_gpu":
    G.signal_peers = signal_acqrel_gpu
elif variant == "no_barrier":
    G.signal_peers = signal_no_barrier
elif variant == "no_signal":
    G.signal_peers = no_signal
    R.wait_for_peers = no_wait
elif variant == "perprog":
    G.signal_peers = signal_perprog
    R.wait_for_peers = no_wait
elif variant == "perprog_relaxed":
    G.signal_peers = signal_perprog_relaxed
    R.wait_for_peers = no_wait
elif variant == "count_only":
    G.signal_peers = signal_count_only
    R.wait_for_peers = no_wait
elif variant == "A":
    G.signal_peers = signal_A
elif variant == "B":
    G.signal_peers = signal_acqrel_gpu
elif variant == "C":
    G.signal_peers = signal_C
elif variant == "D":
    G.signal_peers = signal_D
    R.wait_for_peers = no_wait
elif variant == "own_slot":
    G.push_rows = push_own
elif variant == "no_wait":
    R.wait_for_peers = no_wait
else:
    assert variant == "tree"

open_gpu()
gen = torch.Generator(device="cuda").manual_seed(0)
out = {}
for rnd in range(3):
    for name in ("o_proj", "down_proj"):
        r = {}
        chk.times(f"{variant}:{name}", *chk.SHAPES[name], gen, r)
        out.setdefault(name, []).append(next(iter(r.values())))
Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
