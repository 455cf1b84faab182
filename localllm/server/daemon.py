"""Running the daemon: bind, serve with uvicorn, record the address in the state file while listening, and
remove it on the way out (SIGTERM and Ctrl-C shut down gracefully, stopping every engine process)."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from localllm.errors import LocalLLMError
from localllm.server.engine_spawn import spawn_preloaded
from localllm.server.logfile import DaemonLogHandler
from localllm.server.settings import ServerSettings
from localllm.server.state import (DaemonState, daemon_pid_at, default_state_path, live_daemon, remove_state,
                                   write_state)


class DaemonStartError(LocalLLMError):
    pass


def client_url(host: str, port: int) -> str:
    """Where a local client reaches a daemon bound to `host` (a wildcard address means loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "::1"
    host = host.strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        other = daemon_pid_at(client_url(host, port), timeout=1.0) if e.errno == errno.EADDRINUSE else None
        elsewhere = "give this daemon another address (--host/--port, LOCALLLM_HOST)"
        if other:
            why = f"another localllm daemon (pid {other}), of another LOCALLLM_HOME, is listening there; stop it, or " \
                  f"{elsewhere}"
        elif e.errno == errno.EADDRINUSE:
            why = f"another program is listening there; {elsewhere}"
        else:
            why = e.strerror or str(e)
        raise DaemonStartError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(False)
    return sock


def serve(settings: ServerSettings, log_file: Path | None = None) -> None:
    """Runs the daemon in the foreground until SIGTERM/SIGINT. Raises DaemonStartError if it cannot start.
    With `log_file`, logs there (rotated; stdout and stderr follow), else to stderr."""
    handler = DaemonLogHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s localllm: %(message)s", handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)   # its request lines (the probe of a port in use) are noise
    state_path = settings.state_file or default_state_path()
    running = live_daemon(state_path)   # also cleans the state a killed daemon left behind
    if running is not None:
        raise DaemonStartError(f"a daemon is already running at {running.url} (pid {running.pid}); "
                               "stop it with 'localllm stop'")
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    url = client_url(settings.host, port)
    try:
        # the preloaded models' engines start first, so that their imports (torch) and loads overlap the web
        # stack's imports below (a second of a cold `localllm run` on a small CPU)
        spawned = spawn_preloaded(settings.models, settings.engine_config)
        import asyncio   # here, not above: ~30 ms that the engines' start need not wait for

        server = _make_server(settings, url, spawned)
        state = DaemonState(pid=os.getpid(), url=url, host=settings.host, port=port,
                            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            api_key_required=bool(settings.api_key))
        asyncio.run(_serve(server, sock, state_path, state))
    finally:
        sock.close()
        remove_state(state_path, os.getpid())
    if not server.started:
        raise DaemonStartError("the daemon failed to start (see the messages above)")


def _make_server(settings: ServerSettings, url: str, spawned: dict):
    """A uvicorn server of the app that leaves SIGINT/SIGTERM to us: uvicorn re-raises them after shutting down,
    which would kill the process before the state file is removed (see _serve)."""
    import uvicorn

    from localllm.server.app import create_app

    config = uvicorn.Config(create_app(settings, url, spawned), log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=3, ws="none")

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Server(config)


async def _serve(server, sock: socket.socket, state_path, state: DaemonState) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    def on_signal() -> None:   # the first signal shuts down gracefully, a second one at once
        server.force_exit = server.should_exit
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        write_state(state_path, state)
        logging.getLogger("localllm.server").info("listening on %s (pid %d)", state.url, state.pid)
    await task
