"""The all-reduce of a one-token step split over the two kernels around it: the row-parallel GEMV pushes its partial
sum to every rank (kernels/gemv.py), and the RMSNorm after it pulls them and adds them up (kernels/rmsnorm.py).

At batch 1 an all-reduce costs its latency, and NCCL's also stops the chain of dependent launches: on two H200s it
took ~9 us between the GEMV and the norm, of which the data needs well under one. Here the GEMV's programs store
their rows of the partial sum straight into a slot of every rank's exchange buffer (symmetric memory, mapped on
every GPU; layers/peer_exchange.py), and each program then raises its own flag on every rank. The norm waits until
every rank's flags of the programs that ran have the value of its own, then sums the slots in rank order, so that
every rank rounds the same residual stream.

Each program signals for itself, with a system-scope fence between its stores and its flags, as another GPU must see
them in that order, and the norm polls all the flags with acquire loads. A count of the programs' arrivals on one
word, with the last program raising one flag, did the same with one flag to read, but its contended system-scope
atomics and the three ordered operations of its last program cost ~1.3 us more a site on each rank (two ranks
simulated on one H200).

The buffer is word-addressed (4-byte words): a site (one row-parallel projection of the model) has a flag per rank
and program (int32, [WORLD, width]: a program has at least one row, so `width` flags a rank always suffice; padded to
128 bytes), then WORLD slots of `width` float32. A peer's copy of a word is at `delta` words from this rank's copy
(deltas[r]; deltas[rank] = 0), so one pointer and the deltas reach every rank. A flag counts the times its program
ran: every one-token step runs every site once on every rank with the same grid, so the values agree; a slot is
rewritten only a step later, after two more sites, by which time every rank has summed it.

A rank that never arrives (its process died) would hold the waiting kernel forever: the wait also reads an
`abandon` word that the engine's watchdog sets when a worker dies (the step then finishes with garbage, and the
engine raises as it does for a failed collective), and traps after TIMEOUT_NS (the process group's collective
timeout, 15 minutes) as a last resort. Triton's interpreter, which runs programs one after another and has no clock,
runs the same kernels without the fence and the timeout (ON_GPU False).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

TIMEOUT_NS = tl.constexpr(15 * 60 * 10**9)
MAX_WORLD = tl.constexpr(8)   # the most ranks an exchange spans (layers/peer_exchange.py checks it)


@dataclass(frozen=True)
class PeerSite:
    """One row-parallel projection's place in this rank's exchange buffer (views into it, all of this rank's own
    memory): flags [world * width] int32, slots [world * width] float32, and the abandon word [1] int32 (non-zero:
    stop waiting for the peers)."""
    flags: torch.Tensor
    slots: torch.Tensor
    abandon: torch.Tensor
    deltas: torch.Tensor     # [world] int64: words from this rank's buffer to each rank's
    rank: int
    world: int
    width: int

    def signal_args(self) -> tuple:
        return self.flags, self.deltas

    def constants(self) -> dict:
        return {"PUSH": True, "RANK": self.rank, "WORLD": self.world, "ON_GPU": self.flags.is_cuda}


@triton.jit
def _fence_system(x):
    """x, once this thread's earlier memory operations are ordered before its later ones for every GPU and the host
    (fence.acq_rel.sys): after the program's stores, the flags written next release them."""
    return tl.inline_asm_elementwise("fence.acq_rel.sys; mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def next_flag(flags_ptr, WIDTH_WORDS, RANK: tl.constexpr):
    """The value this program's flag of the site takes this time: one more than it holds (it wrote it itself, a step
    ago). Read early: the load is nobody's output this step."""
    return tl.load(flags_ptr + RANK * WIDTH_WORDS + tl.program_id(0)) + 1


@triton.jit
def signal_peers(flags_ptr, deltas_ptr, flag, WIDTH_WORDS, RANK: tl.constexpr, WORLD: tl.constexpr,
                 ON_GPU: tl.constexpr):
    """Called by every program of the pushing kernel once its stores are issued: sets its flag of the site
    (flags_ptr: the site's flags in this rank's buffer) to `flag` on every rank, all ranks' at once."""
    ranks = tl.arange(0, MAX_WORLD)
    deltas = tl.load(deltas_ptr + ranks, mask=ranks < WORLD, other=0)   # before the fence: nobody's output
    tl.debug_barrier()   # the program's stores, from every thread, come before the fence below
    if ON_GPU:
        flag = _fence_system(flag)
    own = flags_ptr + RANK * WIDTH_WORDS + tl.program_id(0)
    tl.atomic_xchg(own + deltas, tl.zeros([MAX_WORLD], tl.int32) + flag, mask=ranks < WORLD, sem="relaxed",
                   scope="sys")


@triton.jit
def _trap(x):
    return tl.inline_asm_elementwise("trap; mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _flags_behind(flags_ptr, offs, programs, want):
    """How many of a rank's flags do not hold `want` yet, read with system-scope acquire loads: the slots' loads
    after them see what those flags' writers stored before raising them."""
    ok = offs < programs
    seen = tl.atomic_add(flags_ptr + offs, 0, mask=ok, sem="acquire", scope="sys")
    return tl.sum(((seen != want) & ok).to(tl.int32), 0)


@triton.jit
def wait_for_peers(flags_ptr, abandon_ptr, programs, WIDTH_WORDS, RANK: tl.constexpr, WORLD: tl.constexpr,
                   BLOCK_P: tl.constexpr, ON_GPU: tl.constexpr):
    """Returns once every rank's flags of the site's first `programs` programs equal this rank's own (raised by
    this rank's pushing kernel, which has finished), or the abandon word is set; on the GPU it traps after
    TIMEOUT_NS. The flags are spread over the program's threads, each acquiring its share: the barrier at the end
    orders every thread's reads of the slots after all of them."""
    want = tl.load(flags_ptr + RANK * WIDTH_WORDS)
    offs = tl.arange(0, BLOCK_P)
    if ON_GPU:
        start = tl.extra.cuda.globaltimer()
    for r in tl.static_range(WORLD):
        if r != RANK:
            behind = _flags_behind(flags_ptr + r * WIDTH_WORDS, offs, programs, want)
            while (behind > 0) & (tl.load(abandon_ptr, volatile=True) == 0):
                if ON_GPU:
                    if tl.extra.cuda.globaltimer() - start > TIMEOUT_NS:
                        behind = _trap(behind)
                behind = _flags_behind(flags_ptr + r * WIDTH_WORDS, offs, programs, want)
    tl.debug_barrier()


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
