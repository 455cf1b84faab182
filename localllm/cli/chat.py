"""`localllm chat`: the Textual chat app (localllm.tui), talking to the daemon."""
from __future__ import annotations

from typing import Optional

import typer

from localllm.errors import LocalLLMError


def chat(
    model: Optional[str] = typer.Argument(None, help="Model to chat with (default: a loaded one, else smollm2:135m)."),
    system: str = typer.Option("", "--system", help="System prompt."),
    temperature: float = typer.Option(0.7, "--temperature", help="0 = greedy."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Most tokens per reply."),
) -> None:
    """Chat in a terminal UI with live engine stats (uses the daemon, started at $LOCALLLM_HOST if none runs).
    A model is resolved as `localllm run` resolves it: an alias or Hub repo not pulled yet is pulled first."""
    from localllm.cli.run import daemon_client, model_to_serve, needs_pull, pull_if_missing
    from localllm.hub.reference import resolve_reference
    from localllm.tui.app import ChatApp

    name, daemon_models, client = None, [], None
    try:
        if model is not None:
            reference = resolve_reference(model)
            name, daemon_models = model_to_serve(reference)
            if needs_pull(reference):   # pulling it first needs the daemon now
                client = daemon_client(daemon_models)[0]
                name = pull_if_missing(client, reference, name)
    except (LocalLLMError, OSError) as e:
        typer.echo(f"Error: {' '.join(str(e).split()) or type(e).__name__}", err=True)
        raise typer.Exit(1) from None
    app = ChatApp(name, client=client, system=system, temperature=temperature, max_tokens=max_tokens,
                  daemon_models=daemon_models)
    reason = app.run()
    if app.return_code:
        typer.echo(reason, err=True)
        raise typer.Exit(app.return_code)
