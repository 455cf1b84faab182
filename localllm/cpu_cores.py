"""How many CPU cores this process can really use: its CPU affinity (`taskset`, a cpuset), capped by a CPU quota
(a container's `--cpus`, read from the cgroup v2 `cpu.max` or the cgroup v1 `cpu.cfs_quota_us`). os.cpu_count()
sees neither, and an OpenMP pool larger than the quota makes threads wait on descheduled siblings at every op."""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _quota_cores(root: Path) -> float | None:
    """The quota in cores (2.5 = 250 ms per 100 ms), None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cores(cgroup_root: Path = CGROUP) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _quota_cores(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores
