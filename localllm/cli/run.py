"""`localllm run`: chat with a model through the daemon, which is started in the background when none runs
(as Ollama does). The answer streams from /v1/chat/completions via localllm.client; a known alias or Hub
repo that is not in the store yet (or the embedded model, not fetched yet) is pulled first, through the daemon."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from localllm.errors import InvalidModelNameError, LocalLLMError, one_line
from localllm.cli.daemon import KvCacheDtypeOpt, SpecTokensOpt, SpeculativeOpt
from localllm.hub.embedded import EMBEDDED_ALIAS


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
    speculative: Optional[str] = SpeculativeOpt,
    num_speculative_tokens: Optional[int] = SpecTokensOpt,
    kv_cache_dtype: Optional[str] = KvCacheDtypeOpt,
) -> None:
    """Chat with a model through the daemon (started if needed): answer PROMPT once, or chat interactively."""
    from localllm.config import Config
    from localllm.sampling_params import SamplingParams

    params = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_tokens": max_tokens}
    if seed is not None:
        params["seed"] = seed
    try:
        SamplingParams(**params)   # bad values are refused here, before any daemon is started
        Config(speculative=speculative or "off", num_speculative_tokens=num_speculative_tokens or 4,
               tensor_parallel_size=tp, kv_cache_dtype=kv_cache_dtype or "auto")
        reference, prompt = _model_and_prompt(model, prompt)
        name, preload = model_to_serve(reference)
        start = time.perf_counter()
        engine_args = daemon_args(tp, speculative, num_speculative_tokens, kv_cache_dtype)
        client, started = daemon_client(preload, engine_args)
        if verbose and started:
            typer.echo(f"started the daemon:  {time.perf_counter() - start:.2f} s ({client.url})", err=True)
        if engine_args and not started:
            flags = ", ".join(a for a in engine_args if a.startswith("--"))
            typer.echo(f"note: the daemon was already running, so {flags} did not apply (they apply when `run` "
                       "starts it; `localllm stop` first)", err=True)
        name = pull_if_missing(client, reference, name)
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


def _model_and_prompt(model: str | None, prompt: str | None):
    """The reference of the model named, and the prompt: a lone positional argument that cannot name a model
    (words, spaces) is the prompt to the default model."""
    from localllm.hub.reference import resolve_reference

    try:
        return resolve_reference(model), prompt
    except InvalidModelNameError:
        if prompt is not None:
            raise
        return resolve_reference(None), model


def model_to_serve(reference) -> tuple[str, list[str]]:
    """The name to send the daemon for a resolved model, and the models a daemon started now preloads: this one
    when its files are here, so that its engine loads while the daemon starts (a local path must be allowed
    anyway)."""
    if reference.kind == "embedded":
        name = EMBEDDED_ALIAS
    elif reference.entry is not None:
        name = reference.entry.name
    elif reference.kind == "local":
        name = str(reference.path)
    else:
        name = reference.name
    return name, [] if needs_pull(reference) else [name]


def needs_pull(reference) -> bool:
    """Whether the model's files are not here: a known alias or Hub repo not in the store, or the embedded
    model not fetched yet."""
    return reference.path is None and reference.kind != "local"


def pull_if_missing(client, reference, name: str) -> str:
    """`name`, pulled through the daemon first (with its progress) when it needs_pull. Nothing is asked: a
    pull is what `run` means."""
    if not needs_pull(reference):
        return name
    from localllm.cli.models import pull_through

    typer.echo(f"{reference.name} is not here yet: pulling it", err=True)
    return pull_through(client, name)["name"]


def daemon_args(tp: int | None, speculative: str | None, num_speculative_tokens: int | None,
                kv_cache_dtype: str | None = None) -> list[str]:
    """The options a daemon started for `run` gets (a running daemon keeps its own)."""
    pairs = (("--tp", tp), ("--speculative", speculative), ("--num-speculative-tokens", num_speculative_tokens),
             ("--kv-cache-dtype", kv_cache_dtype))
    return [arg for flag, value in pairs if value is not None for arg in (flag, str(value))]


def daemon_client(models: list[str] = (), args: list[str] = ()):
    """A client of the running daemon, starting one in the background first (where $LOCALLLM_HOST says) when
    none runs, with ARGS added to its command line. Also says whether it started one."""
    from localllm.client import ensure_daemon, find_daemon

    running = find_daemon() is not None
    return ensure_daemon(models=models, args=args), not running


def print_stream(client, model: str, messages: list[dict], params: dict, verbose: bool) -> str:
    """Streams the reply to `messages` to stdout as it arrives; returns its text. Timings are measured here,
    on the client's side; with `verbose` the model is loaded first, so that loading is timed apart from the first
    token, as `ollama run --verbose` does."""
    load_s = None
    if verbose:
        started = time.perf_counter()
        client.load(model)
        load_s = time.perf_counter() - started
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
        typer.echo(_timings(start, first, end, usage, load_s), err=True)
    return "".join(parts)


def _timings(start: float, first: float | None, end: float, usage: dict | None, load_s: float | None) -> str:
    generated = (usage or {}).get("completion_tokens")
    lines = [f"load duration:       {_duration(load_s)}"] if load_s is not None else []
    lines += [f"prompt tokens:       {(usage or {}).get('prompt_tokens', 'n/a')}",
             f"generated tokens:    {generated if generated is not None else 'n/a'}"]
    if first is not None:
        decode_s = end - first
        rate = f"{(generated - 1) / decode_s:.1f} tokens/s" if generated and generated > 1 and decode_s > 0 else "n/a"
        lines += [f"decode rate:         {rate}", f"time to first token: {(first - start) * 1000:.0f} ms"]
    lines.append(f"total time:          {end - start:.2f} s")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


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
