"""The all-reduce of a row-parallel layer, pluggable: the process group's own (NCCL on GPUs, gloo on CPU), or
torch's symmetric-memory one-shot all-reduce for small messages on GPUs.

At batch 1 an all-reduce moves a few KiB and costs its latency, not its bandwidth: inside a CUDA graph on two
NVLinked H200s NCCL takes 10-11 us for 8-128 KiB, the one-shot kernel (every rank reads its peers' buffers
directly) 6.7-8 us. Past SYMM_MEM_MAX_BYTES the one-shot kernel reads too much and NCCL takes over.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from localllm.config import TP_ALLREDUCE_KINDS
SYMM_MEM_MAX_BYTES = 256 << 10


class ProcessGroupReducer:
    """dist.all_reduce in place on the default group."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x)
        return x


def symm_mem_unavailable_reason(device: torch.device) -> str | None:
    """Why the symmetric-memory all-reduce cannot run here, or None when it can."""
    if device.type != "cuda":
        return "it needs CUDA GPUs"
    try:
        import torch.distributed._symmetric_memory  # noqa: F401
    except ImportError as e:
        return f"this torch has no symmetric memory ({e})"
    if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce"):
        return "this torch has no symm_mem.one_shot_all_reduce"
    return None


class SymmMemReducer:
    """One-shot all-reduce through a symmetric-memory buffer for messages up to max_bytes; larger ones (and
    dtypes other than the buffer's) go to the process group. The copy into the buffer and the reduction are
    plain kernels, so both are captured by CUDA graphs."""

    def __init__(self, device: torch.device, dtype: torch.dtype, max_bytes: int = SYMM_MEM_MAX_BYTES):
        import torch.distributed._symmetric_memory as symm_mem

        group = dist.group.WORLD
        self.group_name = group.group_name
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None:   # required by older torch, deprecated (a no-op) by newer
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                enable(self.group_name)
        self.dtype = dtype
        self.buffer = symm_mem.empty(max_bytes // dtype.itemsize, dtype=dtype, device=device)
        self.handle = symm_mem.rendezvous(self.buffer, self.group_name)   # keeps the peers' mappings alive
        self.fallback = ProcessGroupReducer()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        if x.dtype != self.dtype or n > self.buffer.numel() or not x.is_contiguous():
            return self.fallback(x)
        staged = self.buffer[:n]
        staged.copy_(x.view(-1))
        return torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name).view(x.shape)


def check_allreduce_kind(kind: str, device: torch.device) -> None:
    """Refuses, in one line, an all-reduce that cannot run on `device` (before any rank starts)."""
    if kind not in TP_ALLREDUCE_KINDS:
        raise ValueError(f"unknown all-reduce {kind!r}; choose from {', '.join(TP_ALLREDUCE_KINDS)}")
    if kind != "nccl":   # symm_mem and fused both map the peers' memory through torch's symmetric memory
        reason = symm_mem_unavailable_reason(device)
        if reason:
            raise ValueError(f"the {kind} all-reduce is not available: {reason}")


def make_reducer(kind: str, device: torch.device, dtype: torch.dtype):
    """The reducer of the process group that `kind` names ("nccl" or "symm_mem"). Every rank calls this at the
    same point."""
    check_allreduce_kind(kind, device)
    return SymmMemReducer(device, dtype) if kind == "symm_mem" else ProcessGroupReducer()

