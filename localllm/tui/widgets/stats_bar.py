"""The line above the footer: this reply's speed and the daemon's engine numbers (/api/status)."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from localllm.placement import processor_label
from localllm.units import format_size


def short_model(name: str) -> str:
    """A model named by a path shows as its last part."""
    return Path(name).name if "/" in name else name


def reply_text(tokens_per_s: float | None, ttft_s: float | None, streaming: bool = False) -> str:
    rate = f"{tokens_per_s:.1f} tok/s" if tokens_per_s is not None else "– tok/s"
    ttft = f"TTFT {ttft_s * 1000:.0f} ms" if ttft_s is not None else "TTFT –"
    return ("▶ " if streaming else "") + f"{rate} · {ttft}"


def ready_models(status: dict) -> set[str]:
    """The models of a /api/status answer that are loaded and answering."""
    return {m.get("name") for m in status.get("models", []) if m.get("state") == "ready"}


def daemon_text(status: dict | None, model: str, error: str | None = None) -> str:
    """Where the model runs (CPU and its ranks, or the GPUs it spans), KV blocks in use, prefix-cache hit rate and
    memory."""
    if error:
        return f"daemon: {error}"
    if status is None:
        return "daemon: …"
    entry = next((m for m in status.get("models", []) if m.get("name") == model), None)
    if entry is None:
        return "not loaded (loads on first message)"
    if entry.get("state") != "ready":
        return entry.get("state", "?")
    kv = entry.get("kv_blocks") or {}
    prefix = entry.get("prefix_cache") or {}
    where, ranks = processor_label(entry), entry.get("tensor_parallel_size", 1)
    if where == "CPU" and ranks > 1:   # on GPUs the list of GPUs already says how many ranks
        where += f" ({ranks} ranks)"
    parts = [where, f"KV {kv.get('used', 0)}/{kv.get('total', 0)}"]
    parts.append(f"prefix {prefix.get('hit_rate', 0) * 100:.0f}%" if prefix.get("queries") else "prefix –")
    parts.append(f"mem {format_size(entry['memory_bytes']) if entry.get('memory_bytes') else '?'}")
    return " · ".join(parts)


class StatsBar(Static):
    """Model │ reply stats │ engine stats, one line."""

    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.model = ""
        self.reply = reply_text(None, None)
        self.daemon = daemon_text(None, "")

    def show(self, *, model: str | None = None, reply: str | None = None, daemon: str | None = None) -> None:
        if model is not None:
            self.model = model
        if reply is not None:
            self.reply = reply
        if daemon is not None:
            self.daemon = daemon
        self.update(Text.assemble((short_model(self.model), "bold"), " │ ", self.reply, " │ ", self.daemon))
