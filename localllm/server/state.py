"""The daemon's state file (address and pid, mode 0600, in the user's data dir): how clients find it, and how
a daemon that was killed is told apart from a live one (its pid is gone, or its port does not answer as it)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from localllm.hub.paths import data_dir, private_dir

STATE_NAME = "daemon.json"


@dataclass
class DaemonState:
    pid: int
    url: str                 # where clients connect, e.g. http://127.0.0.1:11435
    host: str                # what it is bound to
    port: int
    started_at: str
    api_key_required: bool = False


def default_state_path() -> Path:
    return data_dir() / STATE_NAME


def write_state(path: Path, state: DaemonState) -> None:
    """Atomically, readable by the user only."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".daemon-", suffix=".json", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(state), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(path: Path) -> DaemonState | None:
    """The recorded state, or None when there is none (or it is unreadable, which counts as stale)."""
    try:
        data = json.loads(path.read_text())
        return DaemonState(**{k: data[k] for k in DaemonState.__dataclass_fields__ if k in data})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return DaemonState(pid=-1, url="", host="", port=0, started_at="")   # garbage: stale by construction


def remove_state(path: Path, pid: int | None = None) -> None:
    """Removes the file; with `pid`, only if it still names that process (never a newer daemon's file)."""
    if pid is not None:
        state = read_state(path)
        if state is not None and state.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)   # reap it if it is our own exited child (a zombie looks alive)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """An exited process its parent has not reaped yet (Linux; elsewhere assume not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def daemon_pid_at(url: str, timeout: float = 2.0) -> int | None:
    """The pid that the localllm daemon at url reports on /health; None where nothing answers as one."""
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=timeout)
        pid = response.json().get("pid") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def answers(state: DaemonState, timeout: float = 2.0) -> bool:
    """Whether the address answers /health as the recorded process (a reused pid or port does not)."""
    return bool(state.url) and daemon_pid_at(state.url, timeout) == state.pid


def live_daemon(path: Path | None = None) -> DaemonState | None:
    """The running daemon recorded in the state file; stale state is deleted and None returned."""
    path = path or default_state_path()
    state = read_state(path)
    if state is None:
        return None
    if pid_alive(state.pid) and answers(state):
        return state
    remove_state(path, state.pid if state.pid > 0 else None)
    return None
