"""Pull a model inside the TUI, through the daemon (localllm.client): a name in a small input, the daemon's
progress lines read by a thread worker, the current file's bytes done/total on a ProgressBar. The worker
belongs to the app, so closing the dialog (Esc) leaves a pull in flight to go on in the background (the daemon
finishes it even if the app exits); the app says when it is done."""
from __future__ import annotations

import threading

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Label, ProgressBar

from localllm.client import model_text
from localllm.errors import one_line
from localllm.units import format_size


class PullProgress:
    """What the pull has reached, written by the worker that reads the daemon's progress lines and read by the
    dialog's timer (no widget is touched from that thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.message = ""
        self.filename: str | None = None
        self.done = 0
        self.total: int | None = None

    def show(self, event: dict) -> None:
        """One progress line of the daemon (Ollama's shape)."""
        with self.lock:
            if event.get("digest"):
                self.filename, self.done, self.total = event["digest"], event.get("completed") or 0, event.get("total")
            elif event.get("status"):
                self.message = event["status"]

    def snapshot(self) -> tuple[str, str | None, int, int | None]:
        with self.lock:
            return self.message, self.filename, self.done, self.total


class PullScreen(ModalScreen[str | None]):
    """Dismissed with the pulled model's name, or None (Esc; a pull in flight goes on in the background). A pull
    that ends after the dialog closed tells the screen on top with a Pulled message (the model picker lists
    the new model)."""

    BINDINGS = [Binding("escape", "close", "Close")]

    class Pulled(Message):
        def __init__(self, model: str):
            super().__init__()
            self.model = model

    def __init__(self):
        super().__init__()
        self.progress: PullProgress | None = None
        self.pulling: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="pull-dialog") as box:
            box.border_title = "Pull a model"
            yield Label("An alias (qwen3:0.6b), owner/name, or owner/name-GGUF:Q4_K_M", id="pull-help")
            yield Input(placeholder="model to pull", id="pull-name")
            yield Label("", id="pull-status")
            yield Label("", id="pull-file")
            yield ProgressBar(total=None, show_eta=False, id="pull-bar")
            yield Label("Enter: pull · Esc: cancel", id="pull-note")
            yield Label("", id="pull-error")

    def on_mount(self) -> None:
        self.query_one("#pull-bar").display = False
        self.query_one("#pull-file").display = False
        self.query_one("#pull-status").display = False
        self.query_one("#pull-error").display = False
        self.query_one(Input).focus()
        self.set_interval(0.1, self.show_progress)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if self.pulling or not name:
            return
        self.start(name)

    def start(self, name: str) -> None:
        self.pulling = name
        self.progress = PullProgress()
        self.query_one("#pull-error").display = False
        self.query_one(Input).disabled = True
        bar = self.query_one("#pull-bar", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.query_one("#pull-file").display = True
        self.query_one("#pull-status").display = True
        self.query_one("#pull-status", Label).update(Text(f"pulling {name}…"))
        self.query_one("#pull-file", Label).update("")
        self.query_one("#pull-note", Label).update("Esc: close (the pull goes on in the background)")
        progress, app = self.progress, self.app

        def run() -> None:
            try:
                if app.client is None:
                    raise ConnectionError("not connected to the daemon yet")
                pulled = app.client.pull_to_end(name, on_progress=progress.show)
            except Exception as e:  # noqa: BLE001  (any failure is one line in the dialog, never a traceback)
                app.call_from_thread(self.finished, name, None, one_line(e))
                return
            app.call_from_thread(self.finished, name, pulled, None)

        app.run_worker(run, thread=True, group="pull", name=f"pull {name}", exit_on_error=False)

    def show_progress(self) -> None:
        if self.progress is None or not self.pulling:
            return
        message, filename, done, total = self.progress.snapshot()
        self.query_one("#pull-status", Label).update(Text(message or f"pulling {self.pulling}…"))
        if filename is None:
            return
        bytes_text = f"{format_size(done)} / {format_size(total)}" if total else format_size(done)
        self.query_one("#pull-file", Label).update(Text(f"{filename}  {bytes_text}"))
        self.query_one("#pull-bar", ProgressBar).update(total=total, progress=done)

    def finished(self, name: str, pulled: dict | None, error: str | None) -> None:
        self.pulling = None
        if not self.is_attached or self.app.screen is not self:  # closed meanwhile: the pull ran in the background
            if error:
                self.app.notify(f"Pull of {name} failed: {error}", severity="error")
            else:
                self.app.notify(f"Pulled {model_text(pulled)}.")
                self.app.screen.post_message(self.Pulled(pulled["name"]))
            return
        if error:
            self.query_one("#pull-bar").display = False
            self.query_one("#pull-file").display = False
            self.query_one("#pull-status").display = False
            self.query_one(Input).disabled = False
            self.query_one(Input).focus()
            self.query_one("#pull-note", Label).update("Enter: pull · Esc: cancel")
            error_label = self.query_one("#pull-error", Label)
            error_label.update(Text(f"Error: {error}"))
            error_label.display = True
            return
        self.app.notify(f"Pulled {model_text(pulled)}.")
        self.dismiss(pulled["name"])

    def action_close(self) -> None:
        if self.pulling:
            self.app.notify(f"The pull of {self.pulling} goes on in the background.")
        self.dismiss(None)
