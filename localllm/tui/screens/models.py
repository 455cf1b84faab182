"""Pick the model to chat with: what the daemon may load (/v1/models), loaded ones marked."""
from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from localllm.client import DaemonError


class ModelPicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, current: str):
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="model-dialog") as box:
            box.border_title = "Models"
            yield Label("Loading the model list…", id="model-note")
            yield OptionList(id="model-list")

    def on_mount(self) -> None:
        self.fetch()

    @work(thread=True, exclusive=True)
    def fetch(self) -> None:
        client = self.app.client
        try:
            names = client.models()
            try:
                loaded = {m["name"]: m.get("state", "") for m in client.status().get("models", [])}
            except (DaemonError, KeyError, TypeError):
                loaded = {}
        except (DaemonError, KeyError, TypeError) as e:
            self.app.call_from_thread(self.show_error, str(e))
            return
        self.app.call_from_thread(self.show_models, names, loaded)

    def show_error(self, message: str) -> None:
        self.query_one("#model-note", Label).update(f"Cannot list models: {message}")

    def show_models(self, names: list[str], loaded: dict[str, str]) -> None:
        options = self.query_one(OptionList)
        for name in names:
            marks = []
            if name in loaded:
                marks.append(loaded[name] or "loaded")
            if name == self.current:
                marks.append("current")
            label = name + (f"  ({', '.join(marks)})" if marks else "")
            options.add_option(Option(label, id=name))
        self.query_one("#model-note", Label).update("Enter: chat with this model · Esc: cancel")
        if self.current in names:
            options.highlighted = names.index(self.current)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
