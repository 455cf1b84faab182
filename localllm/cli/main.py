"""The `localllm` command line. Thin handlers: build an LLM, call it, print.

torch and the engine are imported inside the commands so that `localllm --help` stays fast."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from localllm.cli.bench import bench_app
from localllm.cli.models import register as register_model_commands
from localllm.errors import LocalLLMError
from localllm.hub.embedded import EMBEDDED_ALIAS, EMBEDDED_ALIASES
from localllm.sampling_params import SamplingParams

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
register_model_commands(app)  # pull, list, show, rm
app.add_typer(bench_app, name="bench")


@app.callback()
def _main() -> None:
    """localllm: run language models locally with localllm's own inference engine."""


def _is_model(arg: str) -> bool:
    """Whether a lone positional argument names a model rather than being a prompt."""
    if arg.lower() in EMBEDDED_ALIASES or arg.lower().endswith(".gguf"):
        return True
    from localllm.hub.aliases import alias_target
    from localllm.hub.store import find

    try:
        if alias_target(arg) is not None or find(arg) is not None:  # an alias or a pulled model
            return True
    except LocalLLMError:  # an unreadable registry: `run` reports it when it resolves the model
        pass
    try:
        return Path(arg).expanduser().exists()
    except OSError:  # e.g. a long prompt is "File name too long"
        return False


def _print_error(error: Exception) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    typer.echo(f"Error: {message}", err=True)


def print_stream(llm, messages: list[dict], params: SamplingParams, verbose: bool, load_s: float | None = None) -> str:
    """Stream the model's reply to `messages` to stdout, delta by delta; return the reply's text."""
    prompt_ids = llm.engine.chat_prompt(messages)
    start = time.perf_counter()
    first = None
    generated = 0
    parts = []
    for delta in llm.stream(prompt_ids, params):
        if first is None and delta.token_ids:
            first = time.perf_counter()
        generated += len(delta.token_ids)
        parts.append(delta.text)
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    end = time.perf_counter()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if verbose:
        lines = [] if load_s is None else [f"load time:        {load_s:.2f} s"]
        lines += [f"prompt tokens:    {len(prompt_ids)}", f"generated tokens: {generated}"]
        if first is not None:
            decode_s = end - first
            rate = f"{(generated - 1) / decode_s:.1f} tokens/s" if generated > 1 and decode_s > 0 else "n/a"
            lines += [f"decode rate:      {rate}", f"time to first token: {(first - start) * 1000:.0f} ms"]
        typer.echo("\n".join(lines), err=True)
    return "".join(parts)


def _repl(llm, system: str | None, params: SamplingParams, verbose: bool, load_s: float) -> None:
    """A plain line-by-line chat with history; /bye or end of input leaves."""
    messages = [{"role": "system", "content": system}] if system else []
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
        turn = messages + [{"role": "user", "content": line}]
        try:
            reply = print_stream(llm, turn, params, verbose, load_s)
        except KeyboardInterrupt:  # stop this answer, keep the session
            typer.echo()
            continue
        except (LocalLLMError, ValueError) as e:
            _print_error(e)
            continue
        load_s = None  # reported once
        messages = turn + [{"role": "assistant", "content": reply}]


@app.command()
def run(
    model: Optional[str] = typer.Argument(None, help=f"Alias ({EMBEDDED_ALIAS}), .gguf file or model directory; "
                                                       "default: the embedded model."),
    prompt: Optional[str] = typer.Argument(None, help="Ask once and exit; without it, start an interactive chat."),
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Most tokens to generate per answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (reproducible)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for sampling."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold, in (0, 1]."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k likeliest tokens; 0 = off."),
    verbose: bool = typer.Option(False, "--verbose", help="Print timings and token counts to stderr."),
) -> None:
    """Chat with a model: answer PROMPT once, or start an interactive chat."""
    if model is not None and prompt is None and not _is_model(model):
        model, prompt = None, model
    try:
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_tokens=max_tokens)
        start = time.perf_counter()
        from localllm.engine.llm import LLM

        llm = LLM(model)
        load_s = time.perf_counter() - start
        if prompt is None:
            _repl(llm, system, params, verbose, load_s)
        else:
            messages = [{"role": "system", "content": system}] if system else []
            print_stream(llm, messages + [{"role": "user", "content": prompt}], params, verbose, load_s)
    except (LocalLLMError, ValueError) as e:
        _print_error(e)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(err=True)
        raise typer.Exit(130) from None


from localllm.cli.daemon import serve, stop  # noqa: E402  (the daemon's verbs live in their own module)

app.command()(serve)
app.command()(stop)


if __name__ == "__main__":
    app()
