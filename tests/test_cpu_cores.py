"""The cores an engine sizes its thread pool to: the CPU affinity, capped by a cgroup CPU quota."""
from __future__ import annotations

import os

import pytest

from localllm.cpu_cores import available_cores


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_max, expected", [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1)])
def test_a_cgroup_v2_quota_caps_the_cores(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert available_cores(tmp_path) == (_affinity() if expected is None else min(expected, _affinity()))


@pytest.mark.parametrize("quota, expected", [("-1", None), ("100000", 1)])
def test_a_cgroup_v1_quota_caps_the_cores(tmp_path, quota, expected):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(tmp_path) == (_affinity() if expected is None else min(expected, _affinity()))


def test_without_cgroup_files_the_affinity_counts(tmp_path):
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(original)})
    try:
        assert available_cores(tmp_path) == 1
    finally:
        os.sched_setaffinity(0, original)
    assert available_cores(tmp_path) == len(original)
