"""`localllm pull / list / show / rm` as a user runs them (Typer's CliRunner), against the fake Hub; pull goes
through a real daemon, found as the CLI finds it (the state file of this test's LOCALLLM_HOME)."""
import json
import math
import re
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from daemon_helpers import running_daemon
from fake_hub import hub, tiny_model_dir  # noqa: F401 (hub is a fixture)
from localllm.cli.main import app
from localllm.client import DaemonError, find_daemon
from localllm.hub.aliases import ALIASES
from localllm.server.state import default_state_path

ALIAS = "qwen3:0.6b"
REPO = ALIASES[ALIAS]   # the fake Hub serves a tiny model under the alias' repo id
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture
def cli_daemon(hub, tmp_path):
    """The daemon the CLI finds, started inside the fake Hub's environment."""
    with running_daemon(tmp_path / "daemon", state_file=default_state_path()) as daemon:
        yield daemon


@pytest.fixture
def pulled(hub, tiny_dir, tmp_path):
    hub.add_dir(REPO, tiny_dir)
    with running_daemon(tmp_path / "pulling-daemon", state_file=default_state_path()):
        result = runner.invoke(app, ["pull", ALIAS])
    assert result.exit_code == 0, result.output
    return result


def _one_line_error(result, *fragments) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()  # a pull's status lines may come before the error
    assert lines[-1].startswith("Error: ") and sum("Error" in line for line in lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


def test_pull_shows_progress_and_success(pulled):
    assert f"pulling manifest of {REPO}" in pulled.stderr
    assert "architecture Qwen3ForCausalLM: supported" in pulled.stderr
    assert "verifying sha256 digest" in pulled.stderr
    # one bar per file, with its size in binary units
    bar = next(line for line in pulled.stderr.splitlines() if "pulling model.safetensors" in line)
    assert "100%" in bar and "KiB" in bar
    assert pulled.stdout.strip().startswith(f"success: {ALIAS} (30") and pulled.stdout.strip().endswith(", F32)")


def test_a_local_model_is_registered_without_a_daemon(hub, tiny_dir):
    result = runner.invoke(app, ["pull", str(tiny_dir)])
    assert result.exit_code == 0 and result.stdout.startswith(f"success: {tiny_dir.name} ("), result.output
    assert find_daemon() is None


def test_list_is_a_borderless_table_and_json(pulled):
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    header, row = result.stdout.strip().splitlines()
    assert header.split() == ["NAME", "SIZE", "FORMAT", "MODIFIED"]
    assert re.fullmatch(r"qwen3:0\.6b   \d+\.\d KiB   F32      (just now|\d+ seconds? ago)", row), row
    entries = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [e["name"] for e in entries] == [ALIAS] and entries[0]["repo"] == REPO


def test_show_reads_headers_only(pulled, tiny_dir):
    with safe_open(str(tiny_dir / "model.safetensors"), "np") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    info = json.loads(runner.invoke(app, ["show", ALIAS, "--json"]).stdout)
    assert info["architecture"] == "Qwen3ForCausalLM" and info["parameters"] == params
    assert info["context_length"] == 1024 and info["chat_template"] is True and info["format"] == "F32"
    assert info["gpu_weight_bytes"] == info["dense_weight_bytes"] == 2 * params   # run in bf16 on a GPU
    assert {f["name"] for f in info["files"]} == {p.name for p in tiny_dir.iterdir()}
    text = runner.invoke(app, ["show", REPO]).stdout  # the repo id finds the alias' entry
    assert "Qwen3ForCausalLM" in text and "context length" in text and "chat template     yes" in text
    assert re.search(r"weights on a GPU  \d+\.\d KiB in bf16\n", text), text
    assert "model.safetensors" in text


def test_run_answers_with_a_pulled_model(pulled, monkeypatch):
    from localllm.client import stop_daemon

    monkeypatch.setenv("LOCALLLM_HOST", "127.0.0.1:0")   # the daemon `run` starts: any free port, then stopped
    try:
        result = runner.invoke(app, ["run", ALIAS, "hello", "--max-tokens", "3"])
        assert result.exit_code == 0, result.output
    finally:
        stop_daemon()


def test_rm_removes_and_then_is_an_error(pulled):
    result = runner.invoke(app, ["rm", ALIAS])
    assert result.exit_code == 0 and result.stdout.startswith(f"deleted '{ALIAS}' (freed 30")
    assert runner.invoke(app, ["list"]).stdout.strip() == "NAME   SIZE   FORMAT   MODIFIED"
    _one_line_error(runner.invoke(app, ["rm", ALIAS]), f"no pulled model is named '{ALIAS}' (see 'localllm list')")
    _one_line_error(runner.invoke(app, ["rm", "no-such-thing"]), "no pulled model is named 'no-such-thing'")


def test_cp_gives_a_second_name_and_rm_of_either_keeps_what_the_other_uses(pulled):
    from localllm.hub import store

    result = runner.invoke(app, ["cp", ALIAS, "me/mine:v1"])
    assert result.exit_code == 0 and result.stdout == f"copied '{ALIAS}' to 'me/mine:v1'\n", result.output
    names = [line.split()[0] for line in runner.invoke(app, ["list"]).stdout.splitlines()[1:]]
    assert names == ["me/mine:v1", ALIAS]
    original, copy = store.find(ALIAS), store.find("me/mine:v1")
    assert (copy.path, copy.files, copy.snapshot) == (original.path, original.files, original.snapshot)
    shown = json.loads(runner.invoke(app, ["show", "me/mine:v1", "--json"]).stdout)
    assert shown["path"] == original.path
    _one_line_error(runner.invoke(app, ["cp", ALIAS, "me/mine:v1"]), "a model named 'me/mine:v1' exists already")
    _one_line_error(runner.invoke(app, ["cp", ALIAS, "smollm2:135m"]), "is an alias of a model localllm knows")
    _one_line_error(runner.invoke(app, ["cp", ALIAS, "../x"]), "invalid model name '../x'")
    _one_line_error(runner.invoke(app, ["cp", "no-such-thing", "y"]), "no pulled model is named 'no-such-thing'")
    # removing the original frees nothing the copy still uses; removing the copy then frees it all
    result = runner.invoke(app, ["rm", ALIAS])
    assert result.exit_code == 0 and result.stdout == f"deleted '{ALIAS}' (freed 0 B)\n", result.output
    assert all((Path(original.snapshot) / f).is_file() for f in original.files)
    result = runner.invoke(app, ["rm", "me/mine:v1"])
    assert result.exit_code == 0 and result.stdout.startswith("deleted 'me/mine:v1' (freed 30"), result.output
    assert not any((Path(original.snapshot) / f).exists() for f in original.files)


@pytest.mark.parametrize("args, fragment", [
    (["pull", "org/../../etc/passwd"], "'..' is not allowed"),
    (["pull", "/etc/no-such-model-dir"], "absolute path"),
    (["pull", "test-org/missing"], "not found on http://127.0.0.1"),
    (["show", "nothing:here"], "not found"),
])
def test_errors_are_one_line(cli_daemon, args, fragment):
    _one_line_error(runner.invoke(app, args), fragment)


def test_unreachable_hub_is_a_one_line_error(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with running_daemon(tmp_path / "daemon", state_file=default_state_path()):
        _one_line_error(runner.invoke(app, ["pull", REPO]), "127.0.0.1:9")


def test_rm_refuses_a_model_the_daemon_has_loaded_unless_forced(pulled, monkeypatch):
    from localllm.cli import models

    monkeypatch.setattr(models, "_is_loaded", lambda name: name == ALIAS)
    _one_line_error(runner.invoke(app, ["rm", ALIAS]), "loaded by the daemon", "--force")
    assert runner.invoke(app, ["rm", ALIAS, "--force"]).exit_code == 0


def test_rm_force_of_a_model_the_daemon_has_loaded_unloads_it(pulled, tmp_path):
    from daemon_helpers import running_daemon, wait_gone
    from localllm.server.state import default_state_path

    with running_daemon(tmp_path / "daemon", state_file=default_state_path()) as daemon:
        client = daemon.client()
        answer = client.chat(ALIAS, [{"role": "user", "content": "hi"}], max_tokens=2, ignore_eos=True)
        assert answer["usage"]["completion_tokens"] == 2
        pid = daemon.model_status(ALIAS)["pid"]
        _one_line_error(runner.invoke(app, ["rm", ALIAS]), "loaded by the daemon", "--force")
        result = runner.invoke(app, ["rm", ALIAS, "--force"])
        assert result.exit_code == 0 and result.stdout.startswith(f"deleted '{ALIAS}'"), result.output
        assert daemon.status()["models"] == [] and wait_gone(pid)
        assert ALIAS not in client.models()
        with pytest.raises(DaemonError) as refused:
            client.unload(ALIAS)
        assert refused.value.status == 404
        client.close()


def test_the_daemons_progress_lines_become_one_bar_per_file():
    from localllm.cli.models import _PullProgress

    with _PullProgress() as shown:
        shown.show({"status": "pulling manifest of x"})
        for completed in (0, 40, 100):
            shown.show({"status": "pulling model.safetensors", "digest": "model.safetensors", "total": 100,
                        "completed": completed})
        shown.show({"status": "pulling config.json", "digest": "config.json", "total": 7, "completed": 7})
        tasks = {t.description: (t.completed, t.total) for t in shown.progress.tasks}
        assert tasks == {"model.safetensors": (100, 100), "config.json": (7, 7)}
        shown.show({"status": "verifying sha256 digest"})   # a status line closes the bars drawn so far
        assert shown.progress is None


@pytest.mark.parametrize("width", [60, 80, 160])
def test_a_files_progress_line_never_wraps_its_figures(width):
    import io

    from rich.console import Console

    from localllm.cli.models import _PullProgress

    shown = _PullProgress()
    shown.console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    progress = shown._bars()
    progress.add_task("model-00001-of-00004.safetensors", total=4_965_798_912, completed=1_073_741_824)
    shown.console.print(progress.make_tasks_table(progress.tasks))
    lines = shown.console.file.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= width, lines
    assert lines[0].startswith("pulling model-") and " 22% 1.0/4.6 GiB " in lines[0], lines
    assert ("model-00001-of-00004.safetensors" in lines[0]) == (width >= 120), lines   # only the name gives way


def test_is_loaded_asks_the_daemon_status(monkeypatch):
    """Against a stand-in for localllm.client, so that this test does not depend on a running daemon."""
    import sys
    import types

    from localllm.cli.models import _is_loaded

    class Client:
        def __init__(self, url, timeout):
            assert url == "http://127.0.0.1:1"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def status(self):
            return {"models": [{"name": "tiny:test", "state": "loading"}]}

    fake = types.SimpleNamespace(Client=Client, find_daemon=lambda: types.SimpleNamespace(url="http://127.0.0.1:1"))
    monkeypatch.setitem(sys.modules, "localllm.client", fake)
    assert _is_loaded("tiny:test") and not _is_loaded("other")
    fake.find_daemon = lambda: None
    assert not _is_loaded("tiny:test")


def test_show_gives_a_quantized_files_gpu_memory_kept_quantized_and_dense(tmp_path):
    from tiny_models import write_quantized_gguf

    path = write_quantized_gguf(tmp_path / "q.gguf", lambda name: "Q8_0", file_type="MOSTLY_Q8_0")
    text = runner.invoke(app, ["show", str(path)]).stdout
    assert re.search(r"weights on a GPU  1\.2 MiB kept quantized, 2\.3 MiB in bf16 \(--quantize none\)\n",
                     text), text
