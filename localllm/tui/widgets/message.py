"""One turn of the chat: the user's text as typed, a reply rendered as Markdown (streamed into it)."""
from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Markdown, Static


class ChatMessage(Vertical):
    """A bordered block titled by who speaks; `append` grows a reply while it streams."""

    def __init__(self, role: str, content: str = "", title: str | None = None):
        super().__init__(classes=f"message {role}")
        self.role = role
        self.content = content
        self.border_title = title or {"user": "You", "assistant": "Assistant", "error": "Error"}.get(role, role)

    def compose(self):
        if self.role == "assistant":
            yield Markdown(self.content, classes="body")
        else:
            yield Static(Text(self.content), classes="body")

    async def append(self, text: str) -> None:
        self.content += text
        if self.is_attached:
            await self.query_one(Markdown).append(text)

    def set_footnote(self, note: str) -> None:
        self.border_subtitle = note
