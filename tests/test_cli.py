"""The `localllm` command line, in-process (Typer's CliRunner) and once as a real subprocess."""
import os
import subprocess
import sys

from typer.testing import CliRunner

from localllm.cli.main import app

QUESTION = "What is the capital of France?"
runner = CliRunner()


def _one_line_error(result) -> None:
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr


def test_help_lists_run():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "run" in result.stdout


def test_run_answers_with_the_embedded_model():
    result = runner.invoke(app, ["run", QUESTION])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout


def test_unknown_model_is_a_one_line_error():
    _one_line_error(runner.invoke(app, ["run", "/nonexistent/model", "hi"]))


def test_invalid_sampling_value_is_a_one_line_error():
    _one_line_error(runner.invoke(app, ["run", "hi", "--temperature", "-1"]))


def test_console_entry_point_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "localllm.cli.main", "run", QUESTION], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
