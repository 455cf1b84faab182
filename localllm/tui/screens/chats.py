"""Saved conversations: reopen one (Enter) or delete it (d)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from localllm.tui import conversations
from localllm.tui.widgets.stats_bar import short_model


class ChatsScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Back"), Binding("d,delete", "delete", "Delete")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="chats-dialog") as box:
            box.border_title = "Saved chats"
            yield Label("Enter: open · d: delete · Esc: back", id="chats-note")
            yield OptionList(id="chats-list")

    def on_mount(self) -> None:
        self.refresh_list()

    def refresh_list(self) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        found = conversations.list_all()
        for c in found:
            turns = sum(1 for m in c.messages if m["role"] == "user")
            options.add_option(Option(f"{c.display_title()}\n  {short_model(c.model)} · {turns} turns · "
                                      f"{c.updated_at.replace('T', ' ').rstrip('Z')}", id=c.id))
        if not found:
            self.query_one("#chats-note", Label).update("No saved chats yet. Esc: back")
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_delete(self) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is None:
            return
        option = options.get_option_at_index(options.highlighted)
        conversations.delete(option.id)
        self.notify("Chat deleted")
        self.refresh_list()
