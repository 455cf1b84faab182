"""A store disk that fills up during `localllm pull` (from the loopback fake Hub in tests/fake_hub.py): the
pull fails with one clear line, nothing half-written is listed or used, and once there is room again the same
pull completes with the right bytes. As root the store is a small tmpfs that a filler file fills as the weights
start to arrive (a real ENOSPC); otherwise the pull runs under an RLIMIT_FSIZE smaller than the weights. The
pull runs in the daemon that `localllm pull` starts (on a free port), which inherits the limit; it is stopped
after each pull, so that the second one runs in a daemon without it."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from reliability_checks.models_on_disk import TESTS, tiny_model
from reliability_checks.report import Section
from reliability_checks.server import clean_env, run_cli

REPO = "test-org/tiny-qwen3"
WEIGHTS = "model.safetensors"


def pull_disk_full(home: Path, command: str = "") -> Section:
    section = Section("faults: the store's disk fills up during `localllm pull`", command)
    source = tiny_model(home / "security")
    sys.path.insert(0, str(TESTS))
    from fake_hub import FakeHub

    hub = FakeHub()
    store = home / "full-disk"
    try:
        hub.add_dir(REPO, source)
        with _small_disk(store, hub, (source / WEIGHTS).stat().st_size) as (mechanism, limit):
            env = clean_env(store, HF_ENDPOINT=hub.url, LOCALLLM_HOST="127.0.0.1:0")
            try:
                failed = run_cli(store, "pull", REPO, env=env, timeout=300, preexec_fn=limit)
            finally:
                run_cli(store, "stop", env=env, timeout=60)   # before the tmpfs is unmounted
            section.figures.update({"mechanism": mechanism, "first_pull_exit_code": failed.returncode,
                                    "first_pull_error": (failed.stderr.strip().splitlines() or [""])[-1]})
            _after_the_failure(store, env, source, failed, section)
        try:
            again = run_cli(store, "pull", REPO, env=env, timeout=300)
        finally:
            run_cli(store, "stop", env=env, timeout=60)
        section.check("with room again, the same pull completes", again.returncode == 0, again.stderr[-300:])
        section.check("the pulled weights are the Hub's bytes", _pulled_sha(store, env) ==
                      hashlib.sha256((source / WEIGHTS).read_bytes()).hexdigest())
    finally:
        hub.close()
    return section


def _after_the_failure(store: Path, env: dict, source: Path, failed, section: Section) -> None:
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    section.check("the pull fails with one Error: line, last, and no traceback", failed.returncode == 1
                  and len(errors) == 1 and failed.stderr.strip().endswith(errors[0])
                  and "Traceback" not in failed.stderr, failed.stderr[-300:])
    listed = json.loads(run_cli(store, "list", "--json", env=env, timeout=60).stdout or "[]")
    shown = run_cli(store, "show", REPO, env=env, timeout=60)
    section.check("the half-pulled model is not listed and `show` does not find it", not listed and
                  shown.returncode == 1, f"list: {listed}; show exit {shown.returncode}")
    good = {hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()}
    blobs = [p for p in store.rglob("blobs/*") if p.is_file() and not p.name.endswith(".incomplete")]
    wrong = [p.name for p in blobs if hashlib.sha256(p.read_bytes()).hexdigest() not in good]
    section.figures["partial_files_left"] = sorted(p.name for p in store.rglob("*.incomplete"))
    section.check("no file under a final name holds other bytes than the Hub's", not wrong, ", ".join(wrong))


def _pulled_sha(store: Path, env: dict) -> str | None:
    listed = json.loads(run_cli(store, "list", "--json", env=env, timeout=60).stdout or "[]")
    entries = listed if isinstance(listed, list) else listed.get("models", [])
    for entry in entries:
        weights = Path(entry.get("path", "")) / WEIGHTS
        if weights.exists():
            return hashlib.sha256(weights.read_bytes()).hexdigest()
    return None


@contextlib.contextmanager
def _small_disk(store: Path, hub, weights_size: int):
    """Yields (what simulates the full disk, a preexec_fn for the pull). The tmpfs is unmounted after."""
    shutil.rmtree(store, ignore_errors=True)   # a store of its own, empty, each run
    store.mkdir(parents=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={weights_size * 2 + (4 << 20)},mode=0700", "tmpfs", str(store)],
        capture_output=True).returncode == 0
    if not mounted:
        yield f"RLIMIT_FSIZE of {weights_size // 2} bytes on the pull process", _file_size_limit(weights_size // 2)
        return

    def fill(repo_id: str, filename: str) -> None:
        if filename == WEIGHTS and not (store / "filler").exists():
            free = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize
            with contextlib.suppress(OSError):
                (store / "filler").write_bytes(b"\0" * max(0, free - weights_size // 2))

    hub.before_body = fill
    try:
        yield "a tmpfs store that a filler file fills as the weights start to download (ENOSPC)", None
    finally:
        hub.before_body = None
        (store / "filler").unlink(missing_ok=True)
        _move_out_of_tmpfs(store)


def _move_out_of_tmpfs(store: Path) -> None:
    """Copies what the failed pull left to the real disk, so the second pull resumes from it."""
    keep = store.with_name(store.name + ".kept")
    shutil.rmtree(keep, ignore_errors=True)
    try:
        shutil.copytree(store, keep, symlinks=True)
    finally:
        subprocess.run(["umount", str(store)], check=True)
    shutil.copytree(keep, store, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(keep)


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply
