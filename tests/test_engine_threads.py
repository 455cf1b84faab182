"""An engine process sizes its thread pool to the cores it may run on, and starts with OpenMP's idle threads
sleeping rather than spinning (spinning threads collapse throughput when the cores are shared)."""
from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from localllm.config import Config
from localllm.server.engine_client import EngineClient
from tiny_models import build_model_dir

ENGINE = {"block_size": 4, "num_kv_blocks": 16}   # Config fields


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_model_dir("qwen2", tmp_path_factory.mktemp("qwen2")))


@pytest.fixture(autouse=True)
def no_openmp_settings(monkeypatch):
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)


@contextlib.contextmanager
def cpu_affinity(cores: set[int]):
    """This process (and what it starts) may run on `cores` only, until the block ends."""
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, original)


def environment_of(pid: int) -> dict[str, str]:
    """The environment a process started with (the one OpenMP read when torch loaded it)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        entries = f.read().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def started_engine(model_dir: str, engine: dict) -> tuple[int, dict[str, str], set[int]]:
    """Starts an engine process, and returns its reported thread count, its environment and its CPU affinity."""
    async def run():
        client = EngineClient("tiny", Config(model=model_dir, **engine))
        try:
            info = await client.start()
            return info.num_threads, environment_of(client.pid), os.sched_getaffinity(client.pid)
        finally:
            await client.stop()
    return asyncio.run(run())


def test_one_core_one_thread(model_dir):
    core = min(os.sched_getaffinity(0))
    with cpu_affinity({core}):
        threads, environment, affinity = started_engine(model_dir, ENGINE)
    assert threads == 1 and affinity == {core}
    assert environment["OMP_NUM_THREADS"] == "1" and environment["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ and "OMP_NUM_THREADS" not in os.environ   # the daemon's is untouched


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_two_cores_two_threads(model_dir):
    cores = set(sorted(os.sched_getaffinity(0))[:2])
    with cpu_affinity(cores):
        threads, environment, affinity = started_engine(model_dir, ENGINE)
    assert threads == 2 and affinity == cores and environment["OMP_NUM_THREADS"] == "2"


def test_the_engine_option_and_the_users_own_setting_win(model_dir, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    core = min(os.sched_getaffinity(0))
    with cpu_affinity({core}):
        threads, environment, _ = started_engine(model_dir, {**ENGINE, "num_threads": 3})
    assert threads == 3
    assert environment["OMP_NUM_THREADS"] == "3" and environment["OMP_WAIT_POLICY"] == "ACTIVE"
