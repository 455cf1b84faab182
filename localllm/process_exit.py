"""The end of a process that has loaded torch (an engine process, a tensor-parallel worker)."""
from __future__ import annotations

import os
import sys


def exit_now(code: int) -> None:
    """Ends the process without the interpreter's teardown, whose last garbage collection walks torch's whole
    object graph: a second or more on a CPU, which every unload, `localllm stop` and tensor-parallel shutdown
    would wait for. The caller has closed what needed closing; only the standard streams are flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
