"""Running the daemon: bind, serve with uvicorn, record the address in the state file while listening, and
remove it on the way out (SIGTERM and Ctrl-C shut down gracefully, stopping every engine process)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from localllm.errors import LocalLLMError, one_line
from localllm.server.settings import (API_KEY_ENV, DEFAULT_HOST, DEFAULT_KEEP_ALIVE_S, DEFAULT_PORT,
                                      ServerSettings, api_key_from_env, parse_engine_overrides)
from localllm.server.state import DaemonState, default_state_path, live_daemon, remove_state, write_state


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
        raise DaemonStartError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(False)
    return sock


def serve(settings: ServerSettings, log_level: str = "info") -> None:
    """Runs the daemon in the foreground until SIGTERM/SIGINT. Raises DaemonStartError if it cannot start."""
    import uvicorn

    from localllm.server.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s localllm: %(message)s", stream=sys.stderr)
    state_path = settings.state_file or default_state_path()
    running = live_daemon(state_path)   # also cleans the state a killed daemon left behind
    if running is not None:
        raise DaemonStartError(f"a daemon is already running at {running.url} (pid {running.pid}); "
                               "stop it with 'localllm stop'")
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    url = client_url(settings.host, port)
    app = create_app(settings, url)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=3, ws="none")
    server = _make_server(config)
    state = DaemonState(pid=os.getpid(), url=url, host=settings.host, port=port,
                        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        api_key_required=bool(settings.api_key))
    try:
        asyncio.run(_serve(server, sock, state_path, state))
    finally:
        sock.close()
        remove_state(state_path, os.getpid())
    if not server.started:
        raise DaemonStartError("the daemon failed to start (see the messages above)")


def _make_server(config):
    """A uvicorn server that leaves SIGINT/SIGTERM to us: uvicorn re-raises them after shutting down, which
    would kill the process before the state file is removed (see _serve)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Server(config)


async def _serve(server, sock: socket.socket, state_path, state: DaemonState) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m localllm.server", description="The localllm daemon.")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = any free port")
    p.add_argument("--api-key", default=None, help=f"prefer ${API_KEY_ENV}: arguments are visible to ps")
    p.add_argument("--allow-host", action="append", default=[], help="accept this Host header name ('*' = any)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin ('*' = any)")
    p.add_argument("--keep-alive", type=float, default=DEFAULT_KEEP_ALIVE_S, help="seconds; < 0 = forever")
    p.add_argument("--max-queued", type=int, default=64)
    p.add_argument("--model", action="append", default=[], help="allow and preload this model")
    p.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE", help="engine Config override")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel degree (default: the fewest GPUs that fit)")
    p.add_argument("--state-file", default=None)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(host=args.host, port=args.port, api_key=args.api_key or api_key_from_env(),
                          allowed_hosts=args.allow_host, cors_origins=args.cors_origin, keep_alive_s=args.keep_alive,
                          max_queued=args.max_queued, models=args.model,
                          engine=parse_engine_overrides(args.engine + ([] if args.tp is None
                                                                       else [f"tensor_parallel_size={args.tp}"])),
                          state_file=Path(args.state_file).expanduser() if args.state_file else None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        serve(settings_from_args(args), args.log_level)
    except (DaemonStartError, ValueError) as e:
        print(f"Error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
