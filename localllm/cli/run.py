"""`localllm run`: chat with a model through the daemon, which is started in the background when none runs
(as Ollama does). The answer streams from /v1/chat/completions via localllm.client; a known alias or Hub
repo that is not in the store yet is pulled first."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from localllm.errors import LocalLLMError, ModelNotFoundError, one_line
from localllm.hub.embedded import EMBEDDED_ALIAS, EMBEDDED_ALIASES

HOST_ENV = "LOCALLLM_HOST"   # "HOST:PORT" of the daemon `run` starts when none runs (port 0 = any free port)


def run(
    model: Optional[str] = typer.Argument(None, help=f"Alias ({EMBEDDED_ALIAS}, qwen3:0.6b, ...), pulled model, Hub "
                                                       "repo id, .gguf file or model directory; default: the "
                                                       "embedded model."),
    prompt: Optional[str] = typer.Argument(None, help="Ask once and exit; without it, chat (the chat app in a "
                                                      "terminal, a plain line-by-line chat when piped)."),
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Most tokens to generate per answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (reproducible)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for sampling."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold, in (0, 1]."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k likeliest tokens; 0 = off."),
    verbose: bool = typer.Option(False, "--verbose", help="Print timings and token counts to stderr."),
    tp: Optional[int] = typer.Option(None, "--tp", min=1, help="Split the model over N GPUs (applies when this "
                                                              "starts the daemon); default: the fewest that fit."),
) -> None:
    """Chat with a model through the daemon (started if needed): answer PROMPT once, or chat interactively."""
    from localllm.sampling_params import SamplingParams

    if model is not None and prompt is None and not _is_model(model):
        model, prompt = None, model
    params = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_tokens": max_tokens}
    if seed is not None:
        params["seed"] = seed
    try:
        SamplingParams(**params)   # bad values are refused here, before any daemon is started
        name, preload = resolve_model(model)
        start = time.perf_counter()
        client, started = daemon_client(preload, [] if tp is None else ["--tp", str(tp)])
        if verbose and started:
            typer.echo(f"started the daemon:  {time.perf_counter() - start:.2f} s ({client.url})", err=True)
        if prompt is None and sys.stdin.isatty() and sys.stdout.isatty():
            from localllm.tui.app import ChatApp   # a person at a terminal gets the chat app

            ChatApp(name, client=client, system=system or "", temperature=temperature, max_tokens=max_tokens).run()
            return
        messages = [{"role": "system", "content": system}] if system else []
        with client:
            if prompt is None:
                _repl(client, name, messages, params, verbose)
            else:
                print_stream(client, name, messages + [{"role": "user", "content": prompt}], params, verbose)
    except (LocalLLMError, ValueError, OSError) as e:
        _fail(e, model)
    except KeyboardInterrupt:
        typer.echo(err=True)
        raise typer.Exit(130) from None


def resolve_model(model: str | None) -> tuple[str, list[str]]:
    """The name to send to the daemon, and the models a daemon started now must allow (local paths). A known
    alias or Hub repo missing from the store is pulled first (nothing is asked: a pull is what `run` means)."""
    if model is None or model.strip().lower() in EMBEDDED_ALIASES:
        return EMBEDDED_ALIAS, []
    from localllm.hub import store
    from localllm.hub.pull import PullError, parse_model_ref

    path = Path(model).expanduser()
    if path.exists():
        local = str(path.resolve())
        return local, [local]
    entry = store.find(model)
    if entry is not None:
        return entry.name, []
    try:
        parse_model_ref(model)
    except PullError as e:
        raise ModelNotFoundError(f"model '{model}' not found: {e}") from None
    return _pull(model.strip()).name, []


def _pull(model: str):
    from localllm.cli.models import _RichReporter
    from localllm.hub.pull import pull

    with _RichReporter() as reporter:
        reporter.status(f"{model} is not pulled yet: pulling it from the Hugging Face Hub")
        return pull(model, reporter=reporter)


def daemon_client(models: list[str] = (), args: list[str] = ()):
    """A client of the running daemon, starting one in the background first (at $LOCALLLM_HOST, default
    127.0.0.1:11435) when none runs. Also says whether it started one."""
    from localllm.client import ensure_daemon, find_daemon
    from localllm.server.settings import DEFAULT_HOST, DEFAULT_PORT

    host, _, port = (os.environ.get(HOST_ENV) or "").rpartition(":")
    try:
        port = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"${HOST_ENV} must be HOST:PORT, got {os.environ[HOST_ENV]!r}") from None
    running = find_daemon() is not None
    return ensure_daemon(host=host or DEFAULT_HOST, port=port, models=models, args=args), not running


def print_stream(client, model: str, messages: list[dict], params: dict, verbose: bool) -> str:
    """Streams the reply to `messages` to stdout as it arrives; returns its text. Timings are measured here,
    on the client's side (time to first token includes loading the model when it was not loaded)."""
    start = time.perf_counter()
    first = None
    usage = None
    parts = []
    stream = client.chat_stream(model, messages, stream_options={"include_usage": True}, **params)
    with contextlib.closing(stream):   # leaving early (Ctrl-C) closes the request: the daemon aborts it
        for chunk in stream:
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    first = first or time.perf_counter()
                    parts.append(text)
                    sys.stdout.write(text)
                    sys.stdout.flush()
    end = time.perf_counter()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if verbose:
        typer.echo(_timings(start, first, end, usage), err=True)
    return "".join(parts)


def _timings(start: float, first: float | None, end: float, usage: dict | None) -> str:
    generated = (usage or {}).get("completion_tokens")
    lines = [f"prompt tokens:       {(usage or {}).get('prompt_tokens', 'n/a')}",
             f"generated tokens:    {generated if generated is not None else 'n/a'}"]
    if first is not None:
        decode_s = end - first
        rate = f"{(generated - 1) / decode_s:.1f} tokens/s" if generated and generated > 1 and decode_s > 0 else "n/a"
        lines += [f"decode rate:         {rate}", f"time to first token: {(first - start) * 1000:.0f} ms"]
    lines.append(f"total time:          {end - start:.2f} s")
    return "\n".join(lines)


def _repl(client, model: str, history: list[dict], params: dict, verbose: bool) -> None:
    """A plain line-by-line chat with history; /bye or end of input leaves. Ctrl-C stops the current answer."""
    from localllm.client import DaemonError

    tty = sys.stdin.isatty()
    while True:
        try:
            line = input(">>> ") if tty else sys.stdin.readline()
        except EOFError:
            line = ""
        if not line:  # end of input
            if tty:
                typer.echo()
            return
        line = line.strip()
        if line == "/bye":
            return
        if not line:
            continue
        turn = history + [{"role": "user", "content": line}]
        try:
            reply = print_stream(client, model, turn, params, verbose)
        except KeyboardInterrupt:  # stop this answer, keep the session
            typer.echo()
            continue
        except DaemonError as e:
            if e.status is None or e.status == 404:   # the daemon is gone, or the model is not served
                raise
            _print_error(e)   # e.g. this turn does not fit the context: the session goes on
            continue
        history = turn + [{"role": "assistant", "content": reply}]


def _is_model(arg: str) -> bool:
    """Whether a lone positional argument names a model rather than being a prompt."""
    if arg.lower() in EMBEDDED_ALIASES or arg.lower().endswith(".gguf"):
        return True
    from localllm.hub.aliases import alias_target
    from localllm.hub.pull import PullError, parse_model_ref
    from localllm.hub.store import find

    try:
        if alias_target(arg) is not None or find(arg) is not None:  # an alias or a pulled model
            return True
    except LocalLLMError:  # an unreadable registry: `run` reports it when it resolves the model
        pass
    try:
        if Path(arg).expanduser().exists():
            return True
    except OSError:  # e.g. a long prompt is "File name too long"
        return False
    try:   # a Hub repo id (owner/name, owner/name-GGUF:Q4_K_M): no spaces, one slash
        return parse_model_ref(arg).kind in ("hub", "gguf")
    except PullError:
        return False


def _print_error(error: Exception) -> None:
    typer.echo(f"Error: {one_line(error)}", err=True)


def _fail(error: Exception, model: str | None) -> None:
    from localllm.client import DaemonError

    if isinstance(error, DaemonError) and error.status == 404 and model and Path(model).expanduser().exists():
        error = LocalLLMError(f"the running daemon does not serve '{model}': a local path is served only by a "
                              "daemon started with it ('localllm stop', then run again), or once registered with "
                              f"'localllm pull {model}'")
    _print_error(error)
    raise typer.Exit(1)
