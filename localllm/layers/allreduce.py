"""The all-reduce of a row-parallel layer, pluggable: the process group's own (NCCL on GPUs, gloo on CPU), or
torch's symmetric-memory all-reduces on GPUs.

At batch 1 an all-reduce moves a few KiB and costs its latency, not its bandwidth: inside a CUDA graph on two
NVLinked H200s NCCL takes 10-11 us for 8-128 KiB, the one-shot kernel (every rank reads all of its peers' buffers)
6.7-8 us. Past ONE_SHOT_MAX_BYTES each rank reads too much that way, and the two-shot kernel takes over: each rank
sums only its 1/N of the message from every peer, then the ranks gather the sums (a reduce-scatter and an
all-gather, the traffic of a ring, without NCCL's protocol). That is the size of a full batch's all-reduces (256
rows of an 8B model: 2 MiB), which NCCL takes 29 us for. Past TWO_SHOT_MAX_BYTES (a long prefill chunk's) NCCL,
bandwidth-bound there, takes over. The two bounds are torch's own (its intra-node all-reduce's).
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from localllm.config import TP_ALLREDUCE_KINDS
ONE_SHOT_MAX_BYTES = 256 << 10
TWO_SHOT_MAX_BYTES = 10 << 20


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


def symm_mem_path(nbytes: int, buffer_bytes: int, two_shot: bool) -> str:
    """Which all-reduce a message of nbytes takes, with a symmetric buffer of buffer_bytes: "one_shot",
    "two_shot" (when this torch has it) or "group" (the process group's). torch's kernels move 16-byte vectors."""
    if nbytes % 16:
        return "group"
    if nbytes <= min(ONE_SHOT_MAX_BYTES, buffer_bytes):
        return "one_shot"
    if two_shot and nbytes <= min(TWO_SHOT_MAX_BYTES, buffer_bytes):
        return "two_shot"
    return "group"


class SymmMemReducer:
    """One-shot all-reduce through a symmetric-memory buffer for small messages, two-shot for larger ones up to
    the buffer's size (see symm_mem_path); larger ones (and dtypes other than the buffer's) go to the process
    group. The copy into the buffer and the reduction are plain kernels, so both are captured by CUDA graphs."""

    def __init__(self, device: torch.device, dtype: torch.dtype, max_bytes: int = TWO_SHOT_MAX_BYTES):
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
        self.two_shot = hasattr(torch.ops.symm_mem, "two_shot_all_reduce_out")
        self.fallback = ProcessGroupReducer()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        path = symm_mem_path(n * x.element_size(), self.buffer.numel() * self.dtype.itemsize, self.two_shot)
        misaligned = path == "two_shot" and x.data_ptr() % 16   # two-shot stores the sum into x in 16-byte vectors
        if x.dtype != self.dtype or not x.is_contiguous() or path == "group" or misaligned:
            return self.fallback(x)
        staged = self.buffer[:n]
        staged.copy_(x.view(-1))
        if path == "one_shot":
            return torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name).view(x.shape)
        # the sum lands in x itself, as the process group's does: the buffer is free again for the next call
        torch.ops.symm_mem.two_shot_all_reduce_out(staged, "sum", self.group_name, x.view(-1))
        return x


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

