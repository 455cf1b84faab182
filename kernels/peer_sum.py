"""The all-reduce of a one-token step split over the two kernels around it: the row-parallel GEMV pushes its partial
sum to every rank (kernels/gemv.py), and the RMSNorm after it pulls them and adds them up (kernels/rmsnorm.py).

At batch 1 an all-reduce costs its latency, and NCCL's also stops the chain of dependent launches: on two H200s it
took ~9 us between the GEMV and the norm, of which the data needs well under one. Here the GEMV's programs store
their rows of the partial sum straight into a slot of every rank's exchange buffer (symmetric memory, mapped on
every GPU; layers/peer_exchange.py), and the last program to finish raises this rank's flag on every rank. The
norm waits until every rank's flag has the value of its own, then sums the slots in rank order, so that every
rank rounds the same residual stream.

The buffer is word-addressed (4-byte words): a site (one row-parallel projection of the model) has WORLD flags
(int32, padded to 128 bytes), then WORLD slots of `width` float32. A peer's copy of a word is at `delta` words from
this rank's copy (deltas[r]; deltas[rank] = 0), so one pointer and the deltas reach every rank. A flag counts the
times its site ran: the arrivals counter (int64, this rank's own memory) counts the programs that finished, and the
one that completes a multiple of the grid writes the quotient. Every one-token step runs every site once on every
rank, so the values agree; a slot is rewritten only a step later, after two more sites, by which time every rank has
summed it.

A rank that never arrives (its process died) would hold the waiting kernel forever: the wait also reads an
`abandon` word that the engine's watchdog sets when a worker dies (the step then finishes with garbage, and the
engine raises as it does for a failed collective), and traps after TIMEOUT_NS (the process group's collective
timeout, 15 minutes) as a last resort.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

TIMEOUT_NS = tl.constexpr(15 * 60 * 10**9)


@dataclass(frozen=True)
class PeerSite:
    """One row-parallel projection's place in this rank's exchange buffer (views into it, all of this rank's own
    memory): flags [world] int32, slots [world * width] float32, this rank's arrivals counter [1] int64, and the
    abandon word [1] int32 (non-zero: stop waiting for the peers)."""
    flags: torch.Tensor
    slots: torch.Tensor
    arrivals: torch.Tensor
    abandon: torch.Tensor
    deltas: torch.Tensor     # [world] int64: words from this rank's buffer to each rank's
    rank: int
    world: int
    width: int

    def signal_args(self) -> tuple:
        return self.flags, self.deltas, self.arrivals

    def constants(self) -> dict:
        return {"PUSH": True, "RANK": self.rank, "WORLD": self.world}


@triton.jit
def signal_peers(flags_ptr, deltas_ptr, arrivals_ptr, RANK: tl.constexpr, WORLD: tl.constexpr):
    """Called by every program of the pushing kernel once its stores are issued: the last one raises this rank's
    flag of the site (flags_ptr: the site's flags in this rank's buffer) on every rank."""
    tl.debug_barrier()   # the program's stores, from every thread, come before the release below
    done = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="sys") + 1
    grid = tl.num_programs(0)
    if done % grid == 0:
        count = (done // grid).to(tl.int32)
        for r in tl.static_range(WORLD):
            tl.atomic_xchg(flags_ptr + RANK + tl.load(deltas_ptr + r), count, sem="release", scope="sys")


@triton.jit
def _trap(x):
    return tl.inline_asm_elementwise("trap; mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def wait_for_peers(flags_ptr, abandon_ptr, RANK: tl.constexpr, WORLD: tl.constexpr, TIMEOUT: tl.constexpr):
    """Returns once every rank's flag of the site equals this rank's own (raised by this rank's pushing kernel,
    which has finished), or the abandon word is set. TIMEOUT: trap after TIMEOUT_NS (off under the interpreter,
    which has no clock)."""
    want = tl.atomic_add(flags_ptr + RANK, 0, sem="acquire", scope="sys")
    if TIMEOUT:
        start = tl.extra.cuda.globaltimer()
    for r in tl.static_range(WORLD):
        if r != RANK:
            seen = tl.atomic_add(flags_ptr + r, 0, sem="acquire", scope="sys")
            while (seen != want) & (tl.load(abandon_ptr, volatile=True) == 0):
                if TIMEOUT:
                    if tl.extra.cuda.globaltimer() - start > TIMEOUT_NS:
                        seen = _trap(seen)
                seen = tl.atomic_add(flags_ptr + r, 0, sem="acquire", scope="sys")


@triton.jit
def push_rows(slots_ptr, deltas_ptr, cols, values, mask, RANK: tl.constexpr, WORLD: tl.constexpr,
              WIDTH_WORDS):
    """Stores values (float32) at cols of this rank's slot of the site on every rank (slots_ptr: the site's
    first slot in this rank's buffer)."""
    own = slots_ptr + RANK * WIDTH_WORDS + cols
    for r in tl.static_range(WORLD):
        tl.store(own + tl.load(deltas_ptr + r), values, mask=mask)


@triton.jit
def sum_of_slots(slots_ptr, cols, mask, WORLD: tl.constexpr, WIDTH_WORDS):
    """The ranks' partial sums at cols added in rank order (float32): every rank rounds the same sum."""
    total = tl.load(slots_ptr + cols, mask=mask, other=0.0)
    for r in tl.static_range(1, WORLD):
        total += tl.load(slots_ptr + r * WIDTH_WORDS + cols, mask=mask, other=0.0)
    return total
