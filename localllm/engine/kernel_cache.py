"""Triton keeps the kernels it compiles on disk across runs (~/.triton/cache, or where $TRITON_CACHE_DIR, read by
Triton itself, points), one directory each, so a second start compiles nothing. Counting those directories around a
model load tells a cold start (kernels compiled) from a warm one."""
from __future__ import annotations

import os
from pathlib import Path


def triton_cache_dir() -> Path | None:
    """Where this Triton keeps compiled kernels; None without Triton (or one too old to say)."""
    try:
        from triton import knobs
    except ImportError:
        return None
    directory = getattr(getattr(knobs, "cache", None), "dir", None)
    return Path(directory) if directory else None


def cached_kernel_count(directory: Path | None) -> int | None:
    """Entries of the kernel cache (0 before the first compile); None when there is no cache to count."""
    if directory is None:
        return None
    try:
        return sum(1 for entry in os.scandir(directory) if entry.is_dir())
    except FileNotFoundError:
        return 0


def start_kind(before: int | None, after: int | None) -> str:
    """How a load went for the kernels, from the cache's entries before and after it ('' when unknown)."""
    if before is None or after is None:
        return ""
    compiled = after - before
    if compiled > 0:
        return f"cold start: {compiled} Triton kernels compiled"
    return "warm start: Triton kernels from the disk cache"
