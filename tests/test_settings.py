"""localllm.settings: the one reader of the environment, its table in `localllm serve --help`, typed values and
one-line errors naming the variable."""
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import localllm
from localllm import settings
from localllm.cli.main import app
from localllm.server.settings import ServerSettings

runner = CliRunner()
PACKAGE_ROOTS = [Path(localllm.__file__).parent, Path(localllm.__file__).parent.parent / "kernels"]
ENVIRONMENT_READ = re.compile(r"\bos\.environ\b|\bgetenv\b|\bputenv\b|from\s+os\s+import\s+[^\n]*\benviron\b")


def test_serve_help_lists_every_variable_of_the_table():
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    listed = result.stdout.split("Environment Variables:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed if line.strip()] == [v.name for v in settings.VARIABLES]
    for variable in settings.VARIABLES:
        line = next(line for line in listed if line.split()[0] == variable.name)
        assert variable.description in line


def test_only_the_settings_module_reads_the_environment():
    readers = sorted(str(path.relative_to(PACKAGE_ROOTS[0].parent))
                     for root in PACKAGE_ROOTS for path in root.rglob("*.py")
                     if ENVIRONMENT_READ.search(path.read_text()))
    assert readers == ["localllm/settings.py"]


def test_every_localllm_variable_the_code_names_is_in_the_table():
    named = {name for root in PACKAGE_ROOTS for path in root.rglob("*.py")
             for name in re.findall(r"\bLOCALLLM_[A-Z_]+\b", path.read_text())}
    assert named <= {v.name for v in settings.VARIABLES}


@pytest.mark.parametrize("text, address", [
    ("0.0.0.0", ("0.0.0.0", 11435)), ("127.0.0.1:8080", ("127.0.0.1", 8080)), (":0", ("127.0.0.1", 0)),
    ("http://localhost:9000/", ("localhost", 9000)), ("[::1]:7000", ("::1", 7000)), ("::1", ("::1", 11435)),
])
def test_daemon_address_forms(monkeypatch, text, address):
    monkeypatch.setenv("LOCALLLM_HOST", text)
    assert settings.daemon_address() == address


def test_unset_and_empty_give_the_defaults(monkeypatch):
    for variable in settings.VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.setenv("LOCALLLM_MAX_QUEUED", "  ")
    assert settings.daemon_address() == ("127.0.0.1", 11435) and str(settings.daemon_address()) == "127.0.0.1:11435"
    assert (settings.keep_alive_s(), settings.max_queued(), settings.cors_origins()) == (300.0, 64, [])
    assert settings.home() is None and settings.hf_hub_cache() is None
    assert settings.hf_endpoint() == "https://huggingface.co"


def test_typed_values(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALLLM_KEEP_ALIVE", "5m")
    monkeypatch.setenv("LOCALLLM_MAX_QUEUED", "3")
    monkeypatch.setenv("LOCALLLM_ORIGINS", "http://a.example, http://b.example,")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert (settings.keep_alive_s(), settings.max_queued()) == (300.0, 3)
    assert settings.cors_origins() == ["http://a.example", "http://b.example"]
    assert settings.hf_endpoint() == "http://127.0.0.1:9" and settings.hf_hub_cache() == tmp_path / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "old"))
    assert settings.hf_hub_cache() == tmp_path / "old"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert settings.hf_hub_cache() == tmp_path / "new"
    monkeypatch.setenv("LOCALLLM_KEEP_ALIVE", "-1")
    assert settings.keep_alive_s() == -1.0


def test_the_daemon_takes_unset_flags_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOST", "localhost:4321")
    monkeypatch.setenv("LOCALLLM_KEEP_ALIVE", "90s")
    monkeypatch.setenv("LOCALLLM_MAX_QUEUED", "7")
    monkeypatch.setenv("LOCALLLM_ORIGINS", "http://a.example")
    monkeypatch.setenv("LOCALLLM_API_KEY", "secret")
    from_env = ServerSettings.from_environment()
    assert (from_env.host, from_env.port, from_env.keep_alive_s, from_env.max_queued) == ("localhost", 4321, 90.0, 7)
    assert from_env.cors_origins == ["http://a.example"] and from_env.api_key == "secret"
    flags = ServerSettings.from_environment(host="127.0.0.1", port=0, keep_alive_s=-1, max_queued=0,
                                           cors_origins=["*"], api_key="other")
    assert (flags.host, flags.port, flags.keep_alive_s, flags.max_queued) == ("127.0.0.1", 0, -1, 0)
    assert flags.cors_origins == ["*"] and flags.api_key == "other"


@pytest.mark.parametrize("name, value", [
    ("LOCALLLM_HOST", "127.0.0.1:http"), ("LOCALLLM_HOST", "127.0.0.1:70000"), ("LOCALLLM_KEEP_ALIVE", "soon"),
    ("LOCALLLM_MAX_QUEUED", "-3"), ("HF_ENDPOINT", "huggingface.co"),
])
def test_a_bad_value_is_a_one_line_error_naming_the_variable(monkeypatch, tmp_path, name, value):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))   # no daemon runs here, so `serve` reads everything
    monkeypatch.setenv(name, value)
    command = ["pull", "owner/name"] if name == "HF_ENDPOINT" else ["serve"]
    result = runner.invoke(app, command)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()   # a pull says what it starts before it fails
    assert lines[-1].startswith(f"Error: ${name}={value!r} is not usable: ") and result.stderr.count("Error") == 1
    assert not (tmp_path / "daemon.json").exists()


def test_run_refuses_a_bad_host_before_starting_a_daemon(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALLLM_HOST", "127.0.0.1:twelve")
    result = runner.invoke(app, ["run", "hello"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: $LOCALLLM_HOST='127.0.0.1:twelve'")
    assert not (tmp_path / "daemon.log").exists()
