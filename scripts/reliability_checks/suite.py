"""Which sections run on which daemon, in what order, at what sizes. The sections that use the main daemon
run first; `daemon-kill` ends it, so it runs last among them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reliability_checks.report import Section
from reliability_checks.server import LocalServer

# max_num_seqs + max_queued: the most sequences the main daemon takes at once (what "n at the limit" means)
MAX_NUM_SEQS, MAX_QUEUED = 64, 64
MAIN_ARGS = ["--max-queued", str(MAX_QUEUED), "--engine", f"max_num_seqs={MAX_NUM_SEQS}"]
MAIN_SECTIONS = ("load", "disconnects", "bad-input", "fuzz", "engine-kill", "daemon-kill")
SECTIONS = MAIN_SECTIONS + ("security", "pull-disk-full")


@dataclass(frozen=True)
class Sizes:
    load_clients: int
    load_requests: int
    load_max_tokens: int
    disconnects: int
    engine_kill_streams: int
    fuzz_examples: int        # per operation and generation mode (valid, invalid)
    stop_strings: int
    json_depth: int
    huge_bytes: int
    flag: str                 # how the command line asks for these sizes


FULL = Sizes(64, 4, 32, 20, 4, 150, 10_000, 100_000, 20 << 20, "")
QUICK = Sizes(8, 2, 16, 5, 2, 12, 10_000, 100_000, 20 << 20, " --quick")


def run_suite(home: Path, sizes: Sizes, only: list[str], schema: Path | None = None,
              progress=lambda section: None, engine: list[str] = ()) -> list[Section]:
    """Runs the sections named in `only`; `progress` sees each one as it ends. `engine` holds KEY=VALUE
    settings for the main daemon's engine."""
    sections = _Reported(progress)
    wanted = [name for name in MAIN_SECTIONS if name in only]
    if wanted:
        try:
            with LocalServer(home, MAIN_ARGS + [a for item in engine for a in ("--engine", item)]) as server:
                for name in wanted:
                    sections.append(_guarded(name, sizes, lambda c: main_section(name, server, sizes, schema, c)))
        except Exception as e:   # the daemon did not start or stop: say so for every section left
            for name in wanted[len(sections):]:
                sections.append(_failed(name, sizes, e))
    if "security" in only:
        from reliability_checks.security import security
        sections.append(_guarded("security", sizes, lambda c: security(home, command=c)))
    if "pull-disk-full" in only:
        from reliability_checks.pull_disk import pull_disk_full
        sections.append(_guarded("pull-disk-full", sizes, lambda c: pull_disk_full(home, command=c)))
    return list(sections)


class _Reported(list):
    """A list of sections that reports each one as it is added."""

    def __init__(self, progress):
        super().__init__()
        self.progress = progress

    def append(self, section: Section) -> None:
        super().append(section)
        self.progress(section)


def main_section(name: str, server: LocalServer, sizes: Sizes, schema: Path | None = None,
                 command: str = "") -> Section:
    from reliability_checks import bad_input, faults, fuzz, load

    if name == "load":
        return load.load(server, sizes.load_clients, sizes.load_requests, sizes.load_max_tokens, command)
    if name == "disconnects":
        return load.disconnects(server, sizes.disconnects, command=command)
    if name == "bad-input":
        return bad_input.bad_input(server, MAX_NUM_SEQS + MAX_QUEUED, command, stop_strings=sizes.stop_strings,
                                   depth=sizes.json_depth, huge_bytes=sizes.huge_bytes)
    if name == "fuzz":
        return fuzz.fuzz(server, sizes.fuzz_examples, schema, command)
    if name == "engine-kill":
        return faults.engine_kill(server, sizes.engine_kill_streams, command)
    return faults.daemon_kill_then_run(server, command)


def command_for(name: str, sizes: Sizes) -> str:
    return f"python scripts/reliability.py --only {name}{sizes.flag}"


def _guarded(name: str, sizes: Sizes, run) -> Section:
    """A section that raises is reported as failed, and the suite goes on."""
    try:
        return run(command_for(name, sizes))
    except Exception as e:
        return _failed(name, sizes, e)


def _failed(name: str, sizes: Sizes, error: Exception) -> Section:
    section = Section(name, command_for(name, sizes))
    section.crashed(error)
    return section
