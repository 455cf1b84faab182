"""The reliability suite: drives a real `localllm serve` (127.0.0.1, a free port, a private LOCALLLM_HOME)
and the `localllm` CLI through load, faults, bad input, schema fuzzing and security checks, prints each
figure with the command that reproduces it, and exits 1 when a check fails.

    python scripts/reliability.py [--quick] [--out results.json] [--only load,security] [--home DIR]

--quick runs reduced sizes (what tests/test_reliability.py runs in CI). --home reuses a data directory, so
that the embedded model's one-time conversion (about 40 s on 2 cores) is not repeated."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_checks.report import render, to_json  # noqa: E402
from reliability_checks.suite import FULL, QUICK, SECTIONS, run_suite  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes, as in CI")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--only", help=f"comma-separated sections, of: {', '.join(SECTIONS)}")
    parser.add_argument("--home", type=Path, help="LOCALLLM_HOME for the daemons (default: a new temporary one)")
    parser.add_argument("--schema", type=Path, help="fuzz against this OpenAPI file instead of the served one")
    parser.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                        help="engine setting for the main daemon, e.g. num_threads=1 on a shared machine")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else list(SECTIONS)
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; known: {', '.join(SECTIONS)}")
    home = args.home or Path(tempfile.mkdtemp(prefix="localllm-reliability-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so that the daemons are stopped on the way out
    sections = run_suite(home, QUICK if args.quick else FULL, only, args.schema,
                         progress=lambda section: print(render([section]), flush=True), engine=args.engine)
    print(render(sections))
    if args.out:
        machine = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
                   "quick": args.quick}
        args.out.write_text(json.dumps({"machine": machine, **to_json(sections)}, indent=1, ensure_ascii=False))
    return 1 if any(s.failures for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
