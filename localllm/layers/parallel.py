"""The tensor-parallel group of this process: rank, world size and the collectives the layers use.

World size 1 (no communication at all) until `init_tensor_parallel` joins a group; the layers read the rank and
size when they are built, so a model is built after joining. The all-reduce is pluggable (see allreduce.py):
NCCL or gloo by default, torch symmetric memory for small messages on GPUs when asked for.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# A rank whose peer died must not wait forever inside a collective; loading a large shard can take minutes.
COLLECTIVE_TIMEOUT = timedelta(minutes=15)
RENDEZVOUS_TIMEOUT = timedelta(minutes=2)


@dataclass
class _Group:
    rank: int
    size: int
    reducer: object   # allreduce.Reducer


_group: _Group | None = None


def tp_rank() -> int:
    return _group.rank if _group else 0


def tp_size() -> int:
    return _group.size if _group else 1


def create_store(size: int) -> dist.TCPStore:
    """Rank 0's rendezvous point, on a free loopback port (its .port tells the other ranks where)."""
    return dist.TCPStore("127.0.0.1", 0, size, is_master=True, wait_for_workers=False, timeout=RENDEZVOUS_TIMEOUT)


def connect_store(port: int, size: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, size, is_master=False, timeout=RENDEZVOUS_TIMEOUT)


def init_tensor_parallel(rank: int, size: int, device: torch.device, store: dist.TCPStore) -> None:
    """Joins the group (gloo on CPU, NCCL on GPUs) whose rank 0 made `store`."""
    global _group
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT, **kwargs)
    from localllm.layers.allreduce import ProcessGroupReducer

    _group = _Group(rank, size, ProcessGroupReducer())


def use_reducer(reducer) -> None:
    """Replaces the all-reduce of the group (every rank must do the same before the next collective)."""
    _group.reducer = reducer


def destroy_tensor_parallel() -> None:
    """Ends the group. CUDA graphs that captured its all-reduces must be released first (ModelRunner.release_graphs):
    destroying, or aborting, an NCCL group they still hold hangs (seen on two H200s; pytorch/pytorch#115388)."""
    global _group
    if _group is None:
        return
    _group = None
    with contextlib.suppress(Exception):   # a peer that died already makes the teardown fail; nothing to keep
        dist.destroy_process_group()


@contextlib.contextmanager
def pretend_rank(rank: int, size: int):
    """Builds (and loads) layers as rank `rank` of `size` without any communication: for tests of the shards and
    for sizing a shard before any process starts."""
    global _group
    previous = _group
    _group = _Group(rank, size, None)
    try:
        yield
    finally:
        _group = previous


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """The sum of x over the ranks (x itself at world size 1). Use the returned tensor: a reducer may not work
    in place."""
    return _group.reducer(x) if _group and _group.size > 1 else x


def gather_to_first(x: torch.Tensor) -> torch.Tensor | None:
    """Rank 0 gets the ranks' tensors concatenated along the last dimension; the others get None."""
    if not _group or _group.size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(_group.size)] if _group.rank == 0 else None
    dist.gather(x, parts, dst=0)
    return torch.cat(parts, dim=-1) if parts is not None else None


def broadcast_from_first(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's x, copied into x on every rank."""
    if _group and _group.size > 1:
        dist.broadcast(x, src=0)
    return x


def min_over_ranks(value: int, device: torch.device) -> int:
    """The smallest of each rank's value (e.g. how many KV blocks fit), so that every rank agrees."""
    if not _group or _group.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
