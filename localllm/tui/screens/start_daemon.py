"""Shown when no daemon answers: start one in the background, or quit."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class StartDaemonScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Quit")]

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="start-dialog") as box:
            box.border_title = "No daemon"
            yield Label(self.reason, id="start-reason")
            yield Label("Start the localllm daemon in the background now?")
            with Horizontal(classes="buttons"):
                yield Button("Start daemon", variant="primary", id="start")
                yield Button("Quit", id="quit")

    def on_mount(self) -> None:
        self.query_one("#start", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "start")
