"""Sampling settings and the system prompt of the current chat."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


class SettingsScreen(ModalScreen[dict | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, temperature: float, max_tokens: int, system: str):
        super().__init__()
        self.values = (temperature, max_tokens, system)

    def compose(self) -> ComposeResult:
        temperature, max_tokens, system = self.values
        with Vertical(classes="dialog", id="settings-dialog") as box:
            box.border_title = "Settings"
            yield Label("Temperature (0 = greedy)")
            yield Input(str(temperature), id="temperature")
            yield Label("Max tokens per reply")
            yield Input(str(max_tokens), id="max-tokens", type="integer")
            yield Label("System prompt")
            yield Input(system, id="system", placeholder="none")
            yield Label("", id="settings-error")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        else:
            self.save()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.save()

    def save(self) -> None:
        try:
            temperature = float(self.query_one("#temperature", Input).value)
            max_tokens = int(self.query_one("#max-tokens", Input).value)
            if not 0 <= temperature <= 2:
                raise ValueError("temperature must be between 0 and 2")
            if max_tokens < 1:
                raise ValueError("max tokens must be at least 1")
        except ValueError as e:
            message = str(e) if "must" in str(e) else "temperature must be a number, max tokens a whole number"
            self.query_one("#settings-error", Label).update(message)
            return
        self.dismiss({"temperature": temperature, "max_tokens": max_tokens,
                      "system": self.query_one("#system", Input).value})
