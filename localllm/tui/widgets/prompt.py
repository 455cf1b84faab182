"""The message input: Up in an empty input takes the last message back for editing."""
from __future__ import annotations

from textual import events
from textual.widgets import Input


class PromptInput(Input):
    async def _on_key(self, event: events.Key) -> None:
        if event.key == "up" and not self.value:
            event.stop()
            event.prevent_default()
            await self.run_action("screen.edit_last")
            return
        await super()._on_key(event)
