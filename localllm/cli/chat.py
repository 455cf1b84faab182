"""`localllm chat`: the Textual chat app (localllm.tui), talking to the daemon."""
from __future__ import annotations

from typing import Optional

import typer


def chat(
    model: Optional[str] = typer.Argument(None, help="Model to chat with (default: a loaded one, else smollm2:135m)."),
    system: str = typer.Option("", "--system", help="System prompt."),
    temperature: float = typer.Option(0.7, "--temperature", help="0 = greedy."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Most tokens per reply."),
) -> None:
    """Chat in a terminal UI with live engine stats (uses the daemon; offers to start it)."""
    from localllm.tui.app import ChatApp

    ChatApp(model, system=system, temperature=temperature, max_tokens=max_tokens).run()
