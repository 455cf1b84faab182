"""The `localllm` command line. Thin handlers, one module per group of verbs: each gets a client (or the model
store), makes one call, formats and prints.

torch and the engine are imported inside the commands so that `localllm --help` stays fast."""
from __future__ import annotations

import typer

from localllm.cli.bench import bench_app
from localllm.cli.models import register as register_model_commands

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _main() -> None:
    """localllm: run language models locally with localllm's own inference engine."""


from localllm.cli.chat import chat  # noqa: E402  (the Textual app, localllm.tui)
from localllm.cli.daemon import ServeCommand, serve, stop  # noqa: E402  (the daemon's verbs live in their own module)
from localllm.cli.ps import ps  # noqa: E402
from localllm.cli.run import run  # noqa: E402

# The verbs in the order a newcomer needs them, each listed by one line (`short_help`), as `ollama --help` does;
# the whole docstring is the verb's own --help.
app.command(short_help="Chat with a model, or answer one prompt.")(run)
app.command(short_help="Chat in the terminal app, with live engine stats.")(chat)
register_model_commands(app)  # pull, list, show, rm
app.command(short_help="Show loaded models, their memory and KV cache use.")(ps)
app.command(short_help="Stop the daemon, or unload one model.")(stop)
app.command(cls=ServeCommand, short_help="Run the daemon in the foreground (OpenAI and Ollama APIs).")(serve)
app.add_typer(bench_app, name="bench", short_help="Measure speed beside the roofline.")


if __name__ == "__main__":
    app()
