"""`localllm pull / list / show / rm`: thin handlers. `pull` goes through the daemon's /api/pull (started if none
runs), so that clients pulling one model share one download and its progress; the others read the model store
and headers (localllm.hub)."""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from typing import List

import typer

from localllm.errors import LocalLLMError, one_line
from localllm.hub.aliases import ALIASES
from localllm.hub.progress import Reporter

# A progress line's columns after the file's name: a 12-cell bar, "100%", "88.6/88.6 MiB", "344.4 MB/s", "0:00:00"
# and the gaps between them.
FIGURES_WIDTH = 50


def register(app: typer.Typer) -> None:
    aliases = ", ".join(ALIASES)
    app.command(epilog=f"Aliases: {aliases}.", short_help="Download a model into the local store.")(pull)
    app.command("list", short_help="List the pulled models.")(list_models)
    app.command(short_help="Show a model's architecture, size, template and files.")(show)
    app.command(short_help="Give a pulled model a second name.")(cp)
    app.command(short_help="Remove pulled models.")(rm)


def pull(
    model: str = typer.Argument(..., help="An alias (qwen3:0.6b), a Hub repo id (Qwen/Qwen3-0.6B), a GGUF repo "
                                          "with a quant tag (owner/name-GGUF:Q4_K_M), or a local model path."),
    revision: str = typer.Option("main", "--revision", help="Branch, tag or commit of the Hub repo."),
) -> None:
    """Download a model from the Hugging Face Hub into the local store, through the daemon (started if none runs;
    its HF_ENDPOINT and HF_TOKEN apply); a local path is registered as it is."""
    from localllm import settings
    from localllm.client import ensure_daemon, model_text
    from localllm.hub.reference import resolve_reference

    try:
        reference = resolve_reference(model, revision)   # a bad name is refused here, before any daemon starts
        if reference.kind == "local":
            from localllm.hub.pull import pull_reference

            entry = pull_reference(reference, _PullProgress())
            pulled = {"name": entry.name, "size": entry.size, "details": {"quantization_level": entry.format}}
        else:
            settings.hf_endpoint()   # a bad $HF_ENDPOINT is refused here, before any daemon starts
            with ensure_daemon() as client:
                pulled = pull_through(client, model, revision)
    except KeyboardInterrupt:
        typer.echo("Error: stopped watching; the daemon finishes the pull (run the pull again to follow it)",
                   err=True)
        raise typer.Exit(130) from None
    except (LocalLLMError, OSError) as e:
        _fail(e)
    typer.echo(f"success: {model_text(pulled)}")


def pull_through(client, model: str, revision: str = "main") -> dict:
    """Pulls `model` through the daemon, its progress on stderr; returns its /api/tags entry (Client.pull_to_end)."""
    with _PullProgress() as progress:
        return client.pull_to_end(model, revision, progress.show)


def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """List the pulled models."""
    from localllm.hub import store
    from localllm.units import format_size

    try:
        entries = store.entries()
    except LocalLLMError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps([asdict(e) for e in entries], indent=2))
        return
    rows = [("NAME", "SIZE", "FORMAT", "MODIFIED")]
    rows += [(e.name, format_size(e.size), e.format, _ago(e.modified)) for e in entries]
    typer.echo(_table(rows))


def _gpu_weights(info: dict) -> str:
    from localllm.units import format_size

    dense = f"{format_size(info['dense_weight_bytes'])} in bf16"
    if info["gpu_weight_bytes"] == info["dense_weight_bytes"]:
        return dense
    return f"{format_size(info['gpu_weight_bytes'])} kept quantized, {dense} (--quantize none)"


def show(
    model: str = typer.Argument(..., help="A pulled model's name (see 'localllm list') or a local model path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show a model's architecture, parameter count, context length, format, the memory its weights take on a
    GPU, chat template and files."""
    from localllm.hub.model_info import describe
    from localllm.hub.reference import resolve_reference
    from localllm.units import format_count, format_size

    try:
        reference = resolve_reference(model)
        path = reference.local_files()
        entry = reference.entry
        header = {"name": entry.name if entry else reference.name,
                  "source": (entry.ref or entry.source) if entry else reference.kind,
                  "revision": entry.revision if entry else None}
        info = {**header, **describe(path), "path": str(path)}
    except (LocalLLMError, OSError) as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    source = info["source"] + (f" @ {info['revision'][:12]}" if info["revision"] else "")
    fields = [("name", info["name"]), ("source", source), ("architecture", info["architecture"]),
              ("parameters", format_count(info["parameters"])), ("context length", info["context_length"] or "unknown"),
              ("format", info["format"]),
              ("weights on a GPU", _gpu_weights(info)),
              ("chat template", "yes" if info["chat_template"] else "no"),
              ("path", info["path"])]
    lines = ["  Model"] + [f"    {k:<18}{v}" for k, v in fields] + ["", "  Files"]
    width = max((len(f["name"]) for f in info["files"]), default=0) + 4
    lines += [f"    {f['name']:<{width}}{format_size(f['size']):>10}" for f in info["files"]]
    typer.echo("\n".join(lines))


def cp(
    source: str = typer.Argument(..., help="A pulled model's name (see 'localllm list')."),
    destination: str = typer.Argument(..., help="The new name: name, owner/name, either with :tag."),
) -> None:
    """Give a pulled model a second name, as `ollama cp` does. The files are shared, not copied; `rm` of either name
    keeps what the other still uses."""
    from localllm.hub.copy import copy_model

    try:
        copied = copy_model(source, destination)
    except (LocalLLMError, OSError) as e:
        _fail(e)
    typer.echo(f"copied '{source}' to '{copied.name}'")


def rm(
    models: List[str] = typer.Argument(..., help="Pulled model names (see 'localllm list')."),
    force: bool = typer.Option(False, "--force", help="Remove a model even while the daemon has it loaded."),
) -> None:
    """Remove pulled models and free the disk space only they use."""
    from localllm.hub import store
    from localllm.hub.reference import pulled_entry
    from localllm.units import format_size

    for model in models:
        try:
            entry = pulled_entry(model)
            if _is_loaded(entry.name):
                if not force:
                    raise LocalLLMError(f"model '{entry.name}' is loaded by the daemon; unload it first or pass "
                                        "--force")
                _unload(entry.name)   # else the daemon keeps serving, and showing, a model that no longer exists
            entry, freed = store.remove(entry.name)
        except (LocalLLMError, OSError) as e:
            _fail(e)
        typer.echo(f"deleted '{entry.name}' (freed {format_size(freed)})")


def _is_loaded(name: str) -> bool:
    """Whether a running daemon has `name` loaded or loading, from its status (localllm.client)."""
    try:
        from localllm.client import Client, find_daemon
    except ImportError:  # a build without the daemon: nothing can hold the model
        return False
    state = find_daemon()
    if state is None:
        return False
    try:
        with Client(state.url, timeout=10.0) as client:
            models = client.status().get("models", [])
    except LocalLLMError:  # a daemon that does not answer serves nothing from these files
        return False
    return any(m.get("name") == name for m in models)


def _unload(name: str) -> None:
    """Asks the running daemon to unload `name` (at once if idle, else when its last request ends)."""
    from localllm.client import Client, DaemonError, find_daemon

    state = find_daemon()
    if state is None:
        return
    try:
        with Client(state.url, timeout=30.0) as client:
            client.unload(name)
    except DaemonError as e:
        if e.status != 404:   # 404: it was unloaded meanwhile
            raise


class _PullProgress(Reporter):
    """A pull's progress on stderr: its status lines, and one rich progress bar (size, speed, time left) per
    file, from the daemon's progress lines. A status line closes the bars drawn so far, so the output reads in
    order on a terminal and in a log."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._close_bars()

    def show(self, event: dict) -> None:
        """One progress line of the daemon (Ollama's shape)."""
        if event.get("digest"):
            self.file(event["digest"], event.get("completed") or 0, event.get("total"))
        elif event.get("status"):
            self.status(event["status"])

    def status(self, message: str) -> None:
        self._close_bars()
        self.console.print(message, markup=False, highlight=False)

    def _bars(self):
        """One line a file at any terminal width: the figures never wrap, the file's name gives way (a shard's
        name is long; its figures are what a person watches)."""
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)
        from rich.table import Column

        name = Column(no_wrap=True, overflow="ellipsis", max_width=max(16, self.console.width - FIGURES_WIDTH))
        return Progress(TextColumn("pulling {task.description}", table_column=name), BarColumn(bar_width=12),
                        TextColumn("{task.percentage:>3.0f}%", table_column=Column(no_wrap=True)),
                        DownloadColumn(binary_units=True, table_column=Column(no_wrap=True)),
                        TransferSpeedColumn(table_column=Column(no_wrap=True)),
                        TimeRemainingColumn(table_column=Column(no_wrap=True)), console=self.console)

    def file(self, name: str, completed: int, total: int | None) -> None:
        if self.progress is None:
            self.progress = self._bars()
            self.progress.start()
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, completed=completed)
        self.progress.update(self.tasks[name], completed=completed, total=total)

    def _close_bars(self) -> None:
        if self.progress is not None:
            self.progress.stop()  # leaves the finished bars on screen
            self.progress, self.tasks = None, {}


def _fail(error: Exception) -> None:
    typer.echo(f"Error: {one_line(error)}", err=True)
    raise typer.Exit(1)


def _table(rows: list[tuple]) -> str:
    """A borderless table, columns three spaces apart, as Ollama prints them."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(f"{str(cell):<{w}}" for cell, w in zip(row, widths)).rstrip() for row in rows)


def _ago(iso: str) -> str:
    try:
        seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    except (TypeError, ValueError):
        return "unknown"
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
                       ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"
