"""Pick the model to chat with: what the daemon may load (/v1/models), each with its size and format
(quantization or dtype) as the daemon lists them (/api/tags), loaded ones marked; `p` pulls another one
(PullScreen)."""
from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from localllm.client import DaemonError
from localllm.tui.screens.pull import PullScreen
from localllm.placement import weights_label
from localllm.units import format_size

_NBSP = "\u00a0"


def model_details(client) -> dict[str, tuple[int, str]]:
    """name -> (size in bytes, format) of the models whose files the daemon has (/api/tags); others are left
    out, as is everything when the daemon cannot say."""
    try:
        return {m["name"]: (m["size"], m["details"]["quantization_level"]) for m in client.tags()}
    except (DaemonError, KeyError, TypeError):
        return {}


def _loaded_mark(model: dict) -> str:
    """'loaded, Q4_K_M 4.6 GiB' (what its weights run as and take, when the daemon says), or its state while it
    loads."""
    if model.get("state") != "ready":
        return model.get("state", "")
    return f"loaded, {weights_label(model)}" if "param_bytes" in model else "loaded"


class ModelPicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("p", "pull", "Pull…")]
    NOTE = "Enter: chat with this model · p: pull a model · Esc: cancel"

    def __init__(self, current: str):
        super().__init__()
        self.current = current
        self.wanted = current  # the option to highlight once the list is in

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="model-dialog") as box:
            box.border_title = "Models"
            yield Label("Loading the model list…", id="model-note")
            yield OptionList(id="model-list")

    def on_mount(self) -> None:
        self.fetch()

    def reload(self, highlight: str | None = None) -> None:
        """Fetch the list again (after a pull), highlighting `highlight`."""
        if highlight:
            self.wanted = highlight
        self.fetch()

    @work(thread=True, exclusive=True)
    def fetch(self) -> None:
        client = self.app.client
        try:
            names = client.models()
            try:
                loaded = {m["name"]: _loaded_mark(m) for m in client.status().get("models", [])}
            except (DaemonError, KeyError, TypeError):
                loaded = {}
        except (DaemonError, KeyError, TypeError, AttributeError) as e:
            self.app.call_from_thread(self.show_error, str(e))
            return
        details = model_details(client)
        self.app.call_from_thread(self.show_models, names, loaded, details)

    def show_error(self, message: str) -> None:
        self.query_one("#model-note", Label).update(Text(f"Cannot list models: {message} · p: pull · Esc: cancel"))

    def show_models(self, names: list[str], loaded: dict[str, str], details: dict[str, tuple[int, str]]) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        width = min(max((len(n) for n in names), default=0), 34)
        for name in names:
            marks = []
            if name in loaded:
                marks.append(loaded[name] or "loaded")
            if name == self.current:
                marks.append("current")
            # no-break spaces: the option list would fold runs of plain ones
            label = Text(name.ljust(width, _NBSP))
            size, fmt = details.get(name, (None, None))
            size_text = format_size(size) if size is not None else "—"
            label.append(f"  {size_text:{_NBSP}>10}  {fmt or '—':{_NBSP}<7}".replace(" ", _NBSP), style="dim")
            if marks:
                label.append(f"{_NBSP * 2}({', '.join(marks)})", style="bold")
            options.add_option(Option(label, id=name))
        self.query_one("#model-note", Label).update(self.NOTE)
        wanted = self.wanted if self.wanted in names else self.current
        if wanted in names:
            options.highlighted = names.index(wanted)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def on_pull_screen_pulled(self, message: PullScreen.Pulled) -> None:
        """A pull started from an earlier picker ended: list the new model."""
        self.reload(message.model)

    def action_pull(self) -> None:
        def pulled(name: str | None) -> None:
            if name:
                self.reload(name)

        self.app.push_screen(PullScreen(), pulled)
