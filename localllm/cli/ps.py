"""`localllm ps`: what the daemon is doing, on one screen — loaded models, then GPU memory and utilization
(nvidia-ml-py, when a GPU and its driver are there) or CPU and RAM, the KV cache, the prefix cache, the queue
and recent throughput. Reads GET /api/status; never starts a daemon."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

import typer

from localllm.cli.models import _table
from localllm.errors import LocalLLMError, one_line
from localllm.gpu_stats import gpu_stats
from localllm.placement import processor_label, weights_label
from localllm.units import format_size

NO_DAEMON = "no daemon running (start one with 'localllm serve', or 'localllm run' starts one)"


def ps(
    as_json: bool = typer.Option(False, "--json", help="Print the daemon's status (and GPUs) as JSON."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh live until Ctrl-C."),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between refreshes with --watch."),
) -> None:
    """Show loaded models, GPU or CPU memory, KV cache, queue and throughput of the running daemon."""
    if watch and not as_json:
        _watch(interval)
        return
    try:
        status = read_status()
    except LocalLLMError as e:
        typer.echo(f"Error: {one_line(e)}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(status, indent=2))
    else:
        typer.echo(render(status))


def read_status() -> dict | None:
    """The daemon's /api/status plus `gpus` (read here, on the same machine), or None if no daemon runs."""
    from localllm.client import Client, find_daemon

    state = find_daemon()
    if state is None:
        return None
    with Client(state.url, timeout=10.0) as client:
        status = client.status()
    status["gpus"] = gpu_stats()   # read here too: the same machine, and fresher than the daemon's
    return status


def render(status: dict | None, now: datetime | None = None) -> str:
    """The ps screen as text."""
    if status is None:
        return NO_DAEMON
    now = now or datetime.now(timezone.utc)
    rows = [("NAME", "SIZE", "WEIGHTS", "PROCESSOR", "TP", "CONTEXT", "UNTIL")]
    for m in status["models"]:
        if m["state"] != "ready":
            rows.append((m["name"], "-", "-", "-", "-", "-", "loading"))
            continue
        rows.append((m["name"], format_size(m["memory_bytes"]), weights_label(m), processor_label(m),
                     str(m.get("tensor_parallel_size", 1)), str(m["context_length"]), _until(m, now)))
    kv, prefix = status["kv_blocks"], status["prefix_cache"]
    lines = [_table(rows), ""]
    if status.get("gpus"):
        for g in status["gpus"]:
            lines.append(f"GPU {g['index']}  {g['name']}: {format_size(g['memory_used_bytes'])} / "
                         f"{format_size(g['memory_total_bytes'])} used, {g['utilization_percent']}% utilization"
                         + _models_on_gpu(status["models"], g["index"]))
    else:
        lines.append(_cpu_line(status.get("host_memory") or {}))
    lines += [
        f"KV cache:      {kv['used']} used / {kv['cached']} cached / {kv['free']} free of {kv['total']} blocks "
        f"({kv['block_size']} tokens each)",
        f"prefix cache:  {prefix['hit_rate']:.1%} hit rate ({prefix['hits']} of {prefix['queries']} prompt tokens)",
        *_speculation_line(status),
        f"requests:      {status['running']} running, {status['waiting']} waiting",
        f"throughput:    {status['tokens_per_s']:.1f} tokens/s (last 10 s)",
        f"daemon:        pid {status['pid']} at {status['address']}, up {_duration(status['uptime_s'])}",
    ]
    return "\n".join(lines)


def _speculation_line(status: dict) -> list[str]:
    """The speculative-decoding line, when a loaded model speculates (a daemon of another version may lack it)."""
    spec = status.get("speculation")
    names = [m["name"] for m in status["models"] if m.get("speculative", "off") != "off"]
    if not spec or not names:
        return []
    return [f"speculation:   {spec['acceptance_rate']:.1%} of {spec['draft_tokens']} draft tokens accepted, "
            f"{spec['mean_accepted_length']:.2f} tokens per verifying step ({', '.join(names)})"]


def _models_on_gpu(models: list[dict], index: int) -> str:
    """', NAME: weights X, KV Y' for each model with a shard on GPU `index`."""
    parts = [f"{m['name']}: weights {format_size(g['weight_bytes'])}, KV {format_size(g['kv_cache_bytes'])}"
             for m in models for g in m.get("gpus") or [] if g["device"] == f"cuda:{index}"]
    return "".join(f"; {part}" for part in parts)


def _until(model: dict, now: datetime) -> str:
    if model.get("keep_alive_forever"):
        return "Forever"
    until = model.get("keep_alive_until")
    if until is None:
        return "in use"
    try:
        seconds = (datetime.fromisoformat(until.replace("Z", "+00:00")) - now).total_seconds()
    except (AttributeError, TypeError, ValueError):   # a daemon of another version may write it otherwise
        return "-"
    return "Stopping..." if seconds <= 0 else f"{_duration(seconds)} from now"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    if seconds < 3600:
        return f"{seconds // 60} minute{'s' if seconds // 60 != 1 else ''}"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _cpu_line(memory: dict) -> str:
    """CPU cores and load (from /proc/loadavg) and the host's RAM as the daemon reported it."""
    parts = [f"CPU: {os.cpu_count() or '?'} cores"]
    try:
        with open("/proc/loadavg") as f:
            parts[0] += f", load {f.read().split()[0]}"
    except (OSError, IndexError):
        pass
    total, available = memory.get("total_bytes"), memory.get("available_bytes")
    if total and available is not None:
        parts.append(f"RAM: {format_size(total - available)} / {format_size(total)} used")
    if memory.get("daemon_rss_bytes"):
        parts.append(f"daemon front end {format_size(memory['daemon_rss_bytes'])}")
    return ", ".join(parts)


def _watch(interval: float) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    def screen() -> Text:
        try:
            body = render(read_status())
        except LocalLLMError as e:   # e.g. the daemon stopped between finding and asking it
            body = f"Error: {one_line(e)}"
        return Text(f"{body}\n\nrefreshing every {interval:g} s; Ctrl-C to quit")

    try:
        with Live(screen(), console=Console(), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(screen(), refresh=True)
    except KeyboardInterrupt:
        pass
