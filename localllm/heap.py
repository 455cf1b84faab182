"""Keeping freed memory in the process for the next step, on the CPU.

A CPU step allocates and frees the same large temporaries every time (a prefill's activations are megabytes a
layer). glibc's malloc hands blocks above its mmap threshold back to the kernel when they are freed, and trims the
top of its heap, so the next step faults every page in again: a 16-stream run of the embedded model on two cores took
300-470k minor page faults and 1.2-2.1 s of system time. With the thresholds raised once the model is loaded it takes
~264k and 1.2-1.4 s, 5-9% faster in 3 of 4 alternated runs (docs/benchmarks.md). The process keeps the memory of its
largest step, which a serving engine reaches again anyway.
"""
from __future__ import annotations

import ctypes
import functools

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 1 << 30          # blocks below 1 GiB come from the heap and go back to it
TRIM_THRESHOLD = 2 ** 31 - 1      # the heap's free top is never handed back
TOP_PAD = 256 << 20               # and it grows 256 MiB at a time (address space; pages are touched as used)


@functools.cache
def retain_freed_memory() -> bool:
    """Raises glibc's thresholds once per process; False where the C library is not glibc (nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt   # the C library the process runs on
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    return all(mallopt(option, value) == 1 for option, value in settings)
