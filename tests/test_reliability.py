"""The reliability suite (scripts/reliability.py) at its --quick sizes, with fewer fuzz cases, against a real
`localllm serve`: every check must hold (0 errors, 0 incomplete streams, 0 leaked KV blocks, 0 responses with
status 5xx, errors in OpenAI's shape, the daemon alive, recovery after engine and daemon kills,
Host/Origin/key/traversal refusals, no pickle loaded, a full disk during pull leaving nothing half-written in
use)."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from reliability_checks.pull_disk import pull_disk_full  # noqa: E402
from reliability_checks.report import render  # noqa: E402
from reliability_checks.security import security  # noqa: E402
from reliability_checks.server import LocalServer  # noqa: E402
from reliability_checks.suite import MAIN_ARGS, MAIN_SECTIONS, QUICK, main_section  # noqa: E402

# the --quick sizes, but 4 schemathesis cases per operation and mode rather than 12: the fuzz section still runs
# every operation valid and invalid, and test_openapi_fuzz.py sends the same operations 25 cases each, with
# stricter checks (each answer conforms to the schema, error bodies included); and the load's streams 8 tokens
# long rather than 16: each must still end complete with exactly that many while the clients share the batch,
# and 8 fewer decode steps per round of requests save seconds on a CPU
SIZES = replace(QUICK, fuzz_examples=4, load_max_tokens=8)


@pytest.fixture(scope="module")
def server(localllm_home):
    """The session's home, so that the embedded model's conversion is shared with the other tests; one
    intra-op thread, as CPU test machines are shared (several torch threads on a busy CPU run ~7x slower)."""
    with LocalServer(Path(localllm_home), MAIN_ARGS + ["--engine", "num_threads=1"]) as daemon:
        yield daemon


def assert_passed(section) -> None:
    assert section.checks and not section.failures, render([section])


@pytest.mark.parametrize("name", MAIN_SECTIONS)   # in this order: daemon-kill ends the daemon
def test_main_daemon_sections(server, name):
    assert_passed(main_section(name, server, SIZES))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A home of their own (they build the same tiny model into it once), apart from the main daemon's."""
    return tmp_path_factory.mktemp("reliability")


def test_security(home):
    assert_passed(security(home))


def test_full_disk_during_pull(home):
    assert_passed(pull_disk_full(home))
