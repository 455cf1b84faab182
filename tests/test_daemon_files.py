"""What the daemon writes is the user's alone (prompts and tracebacks can land in its log): the data directory
is 0700, the log 0600, and the log is rotated by size."""
from __future__ import annotations

import logging
import os
import stat

from daemon_helpers import running_daemon
from localllm.hub.paths import data_dir
from tiny_models import build_model_dir


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_dir_is_0700_and_the_log_0600_with_the_daemon_s_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir(mode=0o755)   # as an older version left it
    os.chmod(tmp_path / "home", 0o755)
    tiny = str(build_model_dir("qwen2", tmp_path / "tiny-qwen2"))
    log = data_dir() / "daemon.log"
    with running_daemon(tmp_path / "run", models=[tiny], state_file=data_dir() / "daemon.json",
                        log_file=log) as daemon:
        assert daemon.status()["models"][0]["state"] == "ready"
        assert mode(data_dir()) == 0o700 and mode(data_dir() / "daemon.json") == 0o600
        assert mode(log) == 0o600
        text = daemon.log()
        assert "listening on" in text and "model " in text and "ready" in text


def test_the_log_rotates_by_size_and_the_redirected_fds_follow(tmp_path):
    from localllm.server.logfile import DaemonLogHandler

    sink = os.open(os.devnull, os.O_WRONLY)   # stands for stdout/stderr, which the daemon points at its log
    path = tmp_path / "logs" / "daemon.log"
    handler = DaemonLogHandler(path, max_bytes=1000, backups=2, redirect_fds=(sink,))
    logger = logging.getLogger("test_daemon_files.rotation")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(100):
            logger.warning("line %03d %s", i, "x" * 50)
        os.write(sink, b"printed by an engine process\n")
    finally:
        logger.removeHandler(handler)
        handler.close()
        os.close(sink)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    assert all(mode(path.parent / name) == 0o600 for name in files) and mode(path.parent) == 0o700
    assert all((path.parent / name).stat().st_size <= 1000 for name in files)
    current = path.read_text()
    assert "line 099" in current and current.endswith("printed by an engine process\n")
    assert "line 000" not in "".join((path.parent / name).read_text() for name in files)   # the oldest is gone
