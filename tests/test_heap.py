"""heap.retain_freed_memory: a process that allocates and frees the same large tensor again and again (as each CPU
step does with its temporaries) faults its pages in once instead of every time. Measured in child processes, one
with the thresholds raised and one without, by their minor page faults."""
from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from localllm.heap import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def steps(n):
    for _ in range(n):
        x = torch.ones(16 << 20)   # 64 MiB, written through
        del x
steps(5)   # the first allocations fault their pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
steps(20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_step_buffer_is_reused_without_faulting_its_pages_again():
    pages = (64 << 20) // 4096
    default, retained = _faults("default"), _faults("retain")
    assert default > 15 * pages      # every allocation of the 20 mapped afresh
    # the warm-up's pages reused: at most a few buffers' pages more (two buffers are alive at each assignment, and
    # where they land can differ from the warm-up's; 4 buffers' worth was seen on a Zen 5 VM), against 20
    assert retained < 6 * pages
