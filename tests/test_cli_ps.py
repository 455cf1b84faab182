"""`localllm ps`, `stop MODEL` and `run` against a real daemon serving a tiny model (started on the default state
file in this session's $LOCALLLM_HOME, so the CLI finds it) and always taken down."""
import json
import re
import signal
import subprocess
import sys
import time
import types

import pytest
from typer.testing import CliRunner

from daemon_helpers import running_daemon
from localllm.cli import ps
from localllm.cli.main import app
from localllm.client import find_daemon
from localllm.hub.pull import format_size
from localllm.server.state import default_state_path

runner = CliRunner()


def test_ps_without_a_daemon_says_so_and_starts_none():
    result = runner.invoke(app, ["ps"])
    assert result.exit_code == 0 and result.stdout.startswith("no daemon running")
    result = runner.invoke(app, ["ps", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) is None
    result = runner.invoke(app, ["stop", "anything"])
    assert result.exit_code == 0 and "no daemon is running" in result.stdout
    assert find_daemon() is None


@pytest.fixture(scope="module")
def daemon(tiny, tmp_path_factory):
    assert find_daemon() is None
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=[tiny], state_file=default_state_path()) as d:
        yield d


def chat(daemon, tiny, messages, max_tokens):
    with daemon.client() as client:
        reply = client.chat(tiny, messages, temperature=0, max_tokens=max_tokens)
    return reply["choices"][0]["message"]["content"]


def test_run_through_the_daemon_prints_what_the_api_answers(daemon, tiny):
    expected = chat(daemon, tiny, [{"role": "user", "content": "The quick brown fox"}], 12)
    result = runner.invoke(app, ["run", tiny, "The quick brown fox", "--max-tokens", "12"])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"


def test_run_without_a_prompt_is_a_multi_turn_chat_through_the_daemon(daemon, tiny):
    first = chat(daemon, tiny, [{"role": "user", "content": "hi"}], 6)
    second = chat(daemon, tiny, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
                                 {"role": "user", "content": "again"}], 6)
    result = runner.invoke(app, ["run", tiny, "--max-tokens", "6"], input="hi\nagain\n/bye\nnot asked\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{first}\n{second}\n"


def _waits_for_input(process) -> bool:
    """Whether the process's main thread sleeps in the kernel (state S in /proc): after an answer is printed in
    full, the chat's next blocking call is reading its next line."""
    stat = open(f"/proc/{process.pid}/task/{process.pid}/stat").read()
    return stat.rsplit(")", 1)[1].split()[0] == "S"


@pytest.fixture
def ctrl_c_as_at_a_terminal():
    """Commands started here get SIGINT as a terminal's foreground command has it. A test run started in the
    background of a shell without job control (`nohup pytest ... &`, some CI runners) has SIGINT ignored, and a
    child inherits an ignored signal: Python would then leave Ctrl-C ignored in the command under test."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def test_ctrl_c_in_the_chat_exits_130(daemon, tiny, ctrl_c_as_at_a_terminal):
    expected = chat(daemon, tiny, [{"role": "user", "content": "hi"}], 4)
    chat_process = subprocess.Popen([sys.executable, "-m", "localllm.cli.main", "run", tiny, "--max-tokens", "4"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        chat_process.stdin.write("hi\n")
        chat_process.stdin.flush()
        # the answer in full: the chat is past start-up and its first turn, in its loop of turns
        assert chat_process.stdout.read(len(expected) + 1) == expected + "\n"
        deadline = time.monotonic() + 20
        while not _waits_for_input(chat_process) and time.monotonic() < deadline:
            time.sleep(0.01)
        chat_process.send_signal(signal.SIGINT)
        out, err = chat_process.communicate(timeout=20)
    finally:
        chat_process.kill()
    assert chat_process.returncode == 130 and "Traceback" not in err, err


def test_a_local_path_the_running_daemon_was_not_started_with_is_a_one_line_error(daemon, tmp_path):
    (tmp_path / "config.json").write_text("{}")   # a model directory as far as the name goes
    result = runner.invoke(app, ["run", str(tmp_path), "hi"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the running daemon does not serve") and "localllm stop" in lines[0]


def test_ps_shows_the_model_and_the_daemon_s_numbers(daemon, tiny):
    chat(daemon, tiny, [{"role": "user", "content": "hi"}], 4)
    status = daemon.status()
    result = runner.invoke(app, ["ps"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "WEIGHTS", "PROCESSOR", "TP", "CONTEXT", "UNTIL"]
    model = status["models"][0]
    row = re.split(r" {3,}", lines[1])
    assert row[0] == tiny and row[3:6] == ["CPU", "1", str(model["context_length"])], lines[1]
    assert re.fullmatch(r"\d+\.\d (MiB|GiB)", row[1]) and row[1].split()[1] == format_size(model["memory_bytes"]).split()[1]
    # a dense float32 checkpoint: its dtype, and the bytes of its parameters
    assert model["quantization"] is None and row[2] == f"F32 {format_size(model['param_bytes'])}", row[2]
    assert re.fullmatch(r"[45] minutes from now", row[6]), row[6]   # keep-alive 300 s, just used
    kv = status["kv_blocks"]
    assert kv["total"] == 128 and kv["used"] + kv["cached"] + kv["free"] == kv["total"] and kv["cached"] > 0
    assert (f"KV cache:      {kv['used']} used / {kv['cached']} cached / {kv['free']} free of 128 blocks "
            "(4 tokens each)") in lines
    prefix = status["prefix_cache"]
    assert f"prefix cache:  {prefix['hit_rate']:.1%} hit rate ({prefix['hits']} of {prefix['queries']} prompt tokens)" in lines
    assert "requests:      0 running, 0 waiting" in lines
    assert any(line.startswith("CPU: ") and "RAM: " in line and "GiB used" in line for line in lines)   # no GPU here
    assert f"daemon:        pid {status['pid']} at {daemon.url}" in result.stdout


def test_ps_json_is_the_status_plus_gpus(daemon, tiny):
    result = runner.invoke(app, ["ps", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    status = daemon.status()
    assert data["gpus"] == []
    assert [m["name"] for m in data["models"]] == [tiny]
    assert data["kv_blocks"] == status["kv_blocks"] and data["pid"] == status["pid"]


def test_ps_watch_refreshes_until_ctrl_c(daemon, tiny, ctrl_c_as_at_a_terminal):
    status_reads = daemon.requests_answered("/api/status")
    watch = subprocess.Popen([sys.executable, "-m", "localllm.cli.main", "ps", "--watch", "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the first screen, then a refresh: the watch is in its loop (it prints to a pipe only when it stops)
        daemon.wait_for_requests("/api/status", status_reads + 2)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=20)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    assert "Traceback" not in err and "NAME" in out and tiny in out and "Ctrl-C to quit" in out


def test_stop_model_unloads_only_that_model(daemon, tiny):
    pid = daemon.status()["pid"]
    result = runner.invoke(app, ["stop", tiny])
    assert result.exit_code == 0 and result.stdout.strip() == f"unloaded {tiny}"
    status = daemon.status()
    assert status["models"] == [] and status["pid"] == pid   # the daemon goes on
    result = runner.invoke(app, ["stop", tiny])
    assert result.exit_code == 1 and result.stderr.strip() == f"Error: The model '{tiny}' is not loaded."


def _fake_nvml(init_error: bool = False):
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = type("NVMLError", (Exception,), {})

    def init():
        if init_error:
            raise nvml.NVMLError("NVML Shared Library Not Found")

    nvml.nvmlInit, nvml.nvmlShutdown = init, lambda: None
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 12 << 30, total=80 << 30)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 + h)
    return nvml


def test_ps_shows_each_gpu_through_nvml_and_nothing_without_a_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_error=True))
    assert ps.gpu_stats() == []
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    status = {"models": [{"name": "qwen3:8b", "state": "ready", "device": "cuda:0", "memory_bytes": 17 << 30,
                          "context_length": 40960, "keep_alive_until": None, "keep_alive_forever": True,
                          "tensor_parallel_size": 2, "dtype": "bfloat16", "quantization": "Q4_K_M",
                          "param_bytes": 4_939_000_000},
                         {"name": "qwen3:0.6b", "state": "loading"}],
              "kv_blocks": {"total": 10, "used": 1, "cached": 2, "free": 7, "block_size": 16},
              "prefix_cache": {"queries": 10, "hits": 5, "hit_rate": 0.5}, "running": 1, "waiting": 0,
              "tokens_per_s": 1234.5, "pid": 1, "address": "http://127.0.0.1:11435", "uptime_s": 4000,
              "gpus": ps.gpu_stats()}
    assert ps.render(status).splitlines()[:6] == [
        "NAME         SIZE       WEIGHTS          PROCESSOR   TP   CONTEXT   UNTIL",
        "qwen3:8b     17.0 GiB   Q4_K_M 4.6 GiB   GPU 0       2    40960     Forever",
        "qwen3:0.6b   -          -                -           -    -         loading",
        "",
        "GPU 0  NVIDIA H100 80GB HBM3: 12.0 GiB / 80.0 GiB used, 40% utilization",
        "GPU 1  NVIDIA H100 80GB HBM3: 24.0 GiB / 80.0 GiB used, 41% utilization",
    ]


def test_the_model_picker_marks_a_loaded_model_with_what_its_weights_run_as():
    from localllm.tui.screens.models import _loaded_mark

    loaded = {"name": "m", "state": "ready", "dtype": "bfloat16", "quantization": "AWQ-int4", "param_bytes": 5 << 30}
    assert _loaded_mark(loaded) == "loaded, AWQ-int4 5.0 GiB"
    assert _loaded_mark({**loaded, "quantization": None}) == "loaded, BF16 5.0 GiB"
    assert _loaded_mark({"name": "m", "state": "loading"}) == "loading"
    assert _loaded_mark({"name": "m", "state": "ready"}) == "loaded"   # a daemon that does not say
