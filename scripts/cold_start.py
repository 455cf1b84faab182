"""Cold start of `localllm run PROMPT`: seconds from the command's start to the first byte of the answer on stdout
(the first token) and to the command's exit, with no daemon running before each run; the daemon the run starts
is stopped after it, outside the timing. With several executables (two checkouts' `localllm`), the runs
alternate between them, so that a comparison holds on a shared machine whose speed drifts. Each run's answer is
printed, to check that it stays the same. Set LOCALLLM_HOME to a private directory: the daemon of that directory is
stopped before every run. The commands run in the system's temporary directory: started inside a checkout, the
daemon (`python -m localllm`) would import that checkout's code, whichever executable started it.

    python scripts/cold_start.py [--runs 5] [--localllm PATH]... [--prompt TEXT]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "What is the capital of France?"
NEUTRAL_DIR = tempfile.gettempdir()


def one_run(localllm: str, prompt: str) -> tuple[float, float, str]:
    """(seconds to the first byte of the answer, seconds to the exit, the answer)."""
    subprocess.run([localllm, "stop"], capture_output=True, timeout=120, check=True, cwd=NEUTRAL_DIR)
    started = time.perf_counter()
    with subprocess.Popen([localllm, "run", prompt], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          cwd=NEUTRAL_DIR) as run:
        first = run.stdout.read(1)
        first_at = time.perf_counter()
        rest = run.stdout.read()
        run.wait()
    ended = time.perf_counter()
    subprocess.run([localllm, "stop"], capture_output=True, timeout=120, check=True, cwd=NEUTRAL_DIR)
    return first_at - started, ended - started, (first + rest).decode(errors="replace").strip()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s median ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs of each executable, after one warm-up")
    parser.add_argument("--localllm", action="append", help="a localllm executable (repeatable); default: this "
                                                            "interpreter's")
    parser.add_argument("--prompt", default=PROMPT)
    args = parser.parse_args()
    executables = [str(Path(exe).absolute()) for exe in args.localllm or [Path(sys.executable).with_name("localllm")]]
    if "LOCALLLM_HOME" not in os.environ:
        sys.exit("set LOCALLLM_HOME to a private data directory: its daemon is stopped before every run")
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    firsts: dict[str, list[float]] = {exe: [] for exe in executables}
    totals: dict[str, list[float]] = {exe: [] for exe in executables}
    for round_ in range(args.runs + 1):   # round 0 is the warm-up
        for exe in executables:
            first, total, answer = one_run(exe, args.prompt)
            print(f"{'warm-up' if round_ == 0 else f'run {round_}'} {exe}: first token {first:.2f} s, "
                  f"exit {total:.2f} s: {answer!r}", flush=True)
            if round_:
                firsts[exe].append(first)
                totals[exe].append(total)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for exe in executables:
        print(f"{exe}: first token {summary(firsts[exe])}, exit {summary(totals[exe])}")
    if len(executables) == 2:
        a, b = executables
        ratios = [x / y for x, y in zip(firsts[a], firsts[b])]
        print(f"first token, run by run, first / second: {statistics.median(ratios):.2f} median "
              f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
