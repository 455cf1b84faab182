"""The `localllm` command line. Thin handlers, one module per group of verbs: each gets a client (or the model
store), makes one call, formats and prints.

torch and the engine are imported inside the commands so that `localllm --help` stays fast."""
from __future__ import annotations

import typer

from localllm.cli.bench import bench_app
from localllm.cli.models import register as register_model_commands

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
register_model_commands(app)  # pull, list, show, rm
app.add_typer(bench_app, name="bench")


@app.callback()
def _main() -> None:
    """localllm: run language models locally with localllm's own inference engine."""


from localllm.cli.chat import chat  # noqa: E402  (the Textual app, localllm.tui)
from localllm.cli.daemon import ServeCommand, serve, stop  # noqa: E402  (the daemon's verbs live in their own module)
from localllm.cli.ps import ps  # noqa: E402
from localllm.cli.run import run  # noqa: E402

app.command()(run)
app.command(cls=ServeCommand)(serve)
app.command()(stop)
app.command()(ps)
app.command()(chat)


if __name__ == "__main__":
    app()
