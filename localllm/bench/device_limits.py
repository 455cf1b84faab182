"""What the device can do, measured once per bench command: copy bandwidth (the decode roofline's denominator) and
matmul FLOP/s (the prefill floor's). Measured rather than taken from a datasheet, since what a card or a shared
CPU VM delivers differs from its nominal figures."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

MiB = 1 << 20
COPY_BYTES = {"cuda": 1024 * MiB, "cpu": 256 * MiB}   # well past the caches (H100 L2 is 50 MB)
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}              # CPU: big enough to be compute bound, quick on 2 cores
REPEATS = {"cuda": 10, "cpu": 3}


def _median_seconds(run: Callable[[], None], device: torch.device) -> float:
    run()   # warm-up: allocation, kernel selection
    times = []
    for _ in range(REPEATS[device.type]):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start_s = time.perf_counter()
            run()
            times.append(time.perf_counter() - start_s)
    return statistics.median(times)


@dataclass(frozen=True)
class DeviceLimits:
    copy_bandwidth_gb_s: float
    matmul_tflop_s: float


def measure_device(device: torch.device, dtype: torch.dtype) -> DeviceLimits:
    """Run before the model is loaded: the engine sizes its KV pool from the memory free at load time, so the
    buffers of these measurements must be gone by then."""
    limits = DeviceLimits(copy_bandwidth_gb_s(device), matmul_tflop_s(device, dtype))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return limits


def copy_bandwidth_gb_s(device: torch.device) -> float:
    """One large tensor copied into another: bytes read plus bytes written, per second (GB = 1e9 bytes)."""
    numel = COPY_BYTES[device.type] // 4
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def matmul_tflop_s(device: torch.device, dtype: torch.dtype) -> float:
    """One large square matmul in the run's dtype."""
    n = MATMUL_SIZE[device.type]
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    seconds = _median_seconds(lambda: torch.matmul(a, b, out=out), device)
    return 2 * n ** 3 / seconds / 1e12
