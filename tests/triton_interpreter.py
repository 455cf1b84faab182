"""Running Triton kernel tests on the CPU under Triton's interpreter (shared by the kernel test files).

Whether Triton interprets is fixed when a @triton.jit decorator runs, Triton's own library functions (tl.zeros,
tl.sum, ...) included, which are decorated when triton is first imported. So TRITON_INTERPRET=1 must be set before
triton is imported, and it must not leak into the rest of the test session (a process that imported triton in
interpreter mode cannot compile real GPU kernels). Hence two modes for a kernel test file:
- in-process: when this process already runs Triton in interpreter mode (TRITON_INTERPRET=1 was set before triton
  was imported, e.g. `TRITON_INTERPRET=1 pytest tests/test_kernels.py`), its kernel tests run here, one by one;
- otherwise (the normal `pytest` run): only its driver test is collected, and it runs the file in a child pytest
  with TRITON_INTERPRET=1, printing the child's report if anything fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def _interpreting() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
        import triton.language as tl
    except ImportError:
        return False
    return isinstance(getattr(tl, "zeros", None), InterpretedFunction)


IN_PROCESS = _interpreting()


def _loop_bounds_from_loads_work() -> bool:
    """Probe: a loop whose bound is a loaded scalar (as in the attention kernels)."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(n_ptr, out_ptr):
        acc = 0
        for i in range(0, tl.load(n_ptr), 1):
            acc += i
        tl.store(out_ptr, acc)

    out = torch.zeros(1, dtype=torch.int32)
    try:
        probe[(1,)](torch.tensor([4], dtype=torch.int32), out)
    except Exception as e:   # noqa: BLE001  (InterpreterError wrapping a TypeError)
        if "0-dimensional" not in repr(e):
            raise
        return False
    return int(out[0]) == 6


def _fix_interpreter_loop_bounds() -> None:
    """Triton 3.6's interpreter turns a scalar into a loop bound with int(array of shape (1,)), which NumPy >= 2.5
    rejects (later Triton squeezes first). Give tensors the later __index__; this only touches the interpreter of
    this (test) process, and only where the probe above fails."""
    import triton.runtime.interpreter as interp
    original = interp._patch_lang_tensor

    def patched(tensor, scope, *args, **kwargs):
        original(tensor, scope, *args, **kwargs)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched


if IN_PROCESS and not _loop_bounds_from_loads_work():
    _fix_interpreter_loop_bounds()
    assert _loop_bounds_from_loads_work()


def run_under_interpreter(test_file: str) -> None:
    """Runs the kernel tests of `test_file` in a child process where Triton interprets; fails with its report."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=900)
    report = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, "kernel tests under TRITON_INTERPRET=1 failed:\n" + report
    assert " passed" in proc.stdout and "failed" not in proc.stdout, report


def collect_one_mode(namespace: dict, driver: str) -> None:
    """Leaves either the kernel tests of a module (in-process mode) or its driver (normal mode), not both."""
    if IN_PROCESS:
        del namespace[driver]
    else:
        for name in [n for n in list(namespace) if n.startswith("test_") and n != driver]:
            del namespace[name]
