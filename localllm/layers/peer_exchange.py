"""The exchange buffer of the split all-reduce (kernels/peer_sum.py): one site per row-parallel projection of the
model, in symmetric memory so that every rank's GEMV can write into every rank's copy.

At one token a step on GPUs, a row-parallel projection's fused GEMV pushes its partial sum to its site and hands
back a PendingSum instead of a reduced residual; the RMSNorm that reads the residual stream next (the next block's,
or the model's last) pulls the ranks' sums into the residual and normalises it, all in the two kernels that ran
anyway. Steps of more tokens, and projections that do not run the fused GEMV, keep the process group's all-reduce.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:   # the kernels (and Triton) are imported only where the exchange is used
    from localllm.kernels.peer_sum import PeerSite

ALIGN_WORDS = 32   # a site's flags are padded to 128 bytes, so that its slots start aligned


@dataclass(frozen=True)
class PendingSum:
    """The residual stream after a row-parallel projection whose ranks' partial sums are still in `site`, pushed by
    `programs` programs on each rank."""
    site: PeerSite
    programs: int


def flag_words(width: int, world: int) -> int:
    """The words of a site's flags: one per rank and program, and a program pushes at least one of the width rows."""
    return -(-world * width // ALIGN_WORDS) * ALIGN_WORDS


def buffer_words(widths: list[int], world: int) -> int:
    """The size of an exchange buffer with sites of these widths, in 4-byte words."""
    return sum(flag_words(width, world) + world * width for width in widths)


def make_sites(buffer: torch.Tensor, widths: list[int], rank: int, deltas: torch.Tensor,
               abandon: torch.Tensor) -> list[PeerSite]:
    """The sites of this rank's buffer (float32 [buffer_words]): deltas [world] int64 are the words from it to
    each rank's copy; abandon [1] int32, the word that releases every wait."""
    from localllm.kernels.peer_sum import PeerSite

    world = deltas.numel()
    flags = buffer.view(torch.int32)
    sites, start = [], 0
    for width in widths:
        slots_at = start + flag_words(width, world)
        sites.append(PeerSite(flags[start:start + world * width], buffer[slots_at:slots_at + world * width],
                              abandon, deltas, rank, world, width))
        start = slots_at + world * width
    return sites


class PeerExchange:
    """Sites of the given widths (a projection's output features) in one symmetric buffer. Every rank builds it at
    the same point, with the same widths."""

    def __init__(self, widths: list[int], device: torch.device):
        import torch.distributed._symmetric_memory as symm_mem

        from localllm.kernels.peer_sum import MAX_WORLD

        rank, world = dist.get_rank(), dist.get_world_size()
        if world > MAX_WORLD.value:
            raise ValueError(f"the fused all-reduce spans at most {MAX_WORLD.value} GPUs, not {world}")
        words = buffer_words(widths, world)
        self.buffer = symm_mem.empty(words, dtype=torch.float32, device=device)
        self.buffer.zero_()   # every flag 0: no site has run
        self.handle = symm_mem.rendezvous(self.buffer, dist.group.WORLD.group_name)   # keeps the peers' mappings
        base = self.buffer.data_ptr()
        deltas = [(self.handle.get_buffer(r, (words,), torch.float32).data_ptr() - base) // 4 for r in range(world)]
        self.abandon = torch.zeros(1, dtype=torch.int32, device=device)
        # made now: once a kernel waits, making a stream or pinned memory might wait for the GPU to go idle
        self._abandon_stream = torch.cuda.Stream(device)
        self._one = torch.ones(1, dtype=torch.int32).pin_memory()
        self.sites = make_sites(self.buffer, widths, rank, torch.tensor(deltas, dtype=torch.int64, device=device),
                                self.abandon)
        torch.cuda.synchronize(device)
        dist.barrier()   # no rank pushes into a buffer its owner has not zeroed yet
        _live.add(self)

    def abandon_waits(self) -> None:
        """Lets every kernel waiting for the peers go on (a rank died: the engine is ending). Copied in on a stream
        of its own by the copy engine, beside the kernel that waits."""
        with torch.cuda.stream(self._abandon_stream):
            self.abandon.copy_(self._one, non_blocking=True)


_live: weakref.WeakSet[PeerExchange] = weakref.WeakSet()


def abandon_peer_waits() -> None:
    """PeerExchange.abandon_waits of every exchange of this process (from the watchdog, when a worker died)."""
    for exchange in list(_live):
        exchange.abandon_waits()


def enable_peer_exchange(projections: list[nn.Module], device: torch.device) -> PeerExchange:
    """Gives each row-parallel projection (linear.RowParallelLinear) a site, its `peer_site` (a collective: every
    rank calls it with the same projections)."""
    exchange = PeerExchange([m.out_features for m in projections], device)
    for module, site in zip(projections, exchange.sites):
        module.peer_site = site
    return exchange
