"""The chat: transcript, stats line, input. Replies stream in a thread worker so the input stays live."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input
from textual.worker import get_current_worker

from localllm.client import DaemonError
from localllm.tui import conversations
from localllm.tui.conversations import Conversation
from localllm.tui.screens.chats import ChatsScreen
from localllm.tui.screens.models import ModelPicker
from localllm.tui.screens.settings import SettingsScreen
from localllm.tui.widgets.message import ChatMessage
from localllm.tui.widgets.prompt import PromptInput
from localllm.tui.widgets.stats_bar import StatsBar, ready_models, reply_text, short_model


@dataclass
class ReplyStats:
    started: float
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    completion_tokens: int | None = None
    load_s: float | None = None   # loading the model first, when it was not loaded (not counted in the TTFT)

    def tokens_per_s(self) -> float | None:
        tokens = self.completion_tokens or self.chunks
        if self.first is None or self.last is None or tokens < 2 or self.last <= self.first:
            return None
        return (tokens - 1) / (self.last - self.first)

    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.started


class ChatScreen(Screen):
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regenerate", "Regen"),
        Binding("ctrl+g", "edit_last", "Edit"),
        Binding("ctrl+y", "copy_reply", "Copy"),
        Binding("ctrl+o", "models", "Models"),
        Binding("ctrl+l", "chats", "Chats"),
        Binding("ctrl+t", "settings", "Settings"),
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+s", "save", "Save", show=False),
    ]

    def __init__(self, conversation: Conversation, request_extra: dict | None = None):
        super().__init__()
        self.conversation = conversation
        self.request_extra = dict(request_extra or {})
        self.streaming = False
        self.stop_event = threading.Event()
        self.last_stats: ReplyStats | None = None

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="transcript")
        yield StatsBar(id="stats")
        yield PromptInput(placeholder="Message (Enter to send, ↑ to edit the last one)", id="prompt")
        yield Footer(compact=True, show_command_palette=False)

    async def on_mount(self) -> None:
        self.show_stats(model=self.conversation.model)
        await self.rebuild()
        self.query_one(PromptInput).focus()

    def on_unmount(self) -> None:
        self.stop_event.set()   # quitting mid-reply: the worker closes the stream, the daemon aborts it

    def show_stats(self, **parts) -> None:
        """Update the stats line (a no-op until the screen is composed)."""
        bar = self.query_one_optional(StatsBar)
        if bar is not None:
            bar.show(**parts)

    @property
    def transcript(self) -> VerticalScroll:
        return self.query_one("#transcript", VerticalScroll)

    def _title(self, role: str) -> str | None:
        return short_model(self.conversation.model) if role == "assistant" else None

    async def rebuild(self) -> None:
        """The transcript again from the conversation (after a load, an edit, a regenerate)."""
        await self.transcript.remove_children()
        await self.transcript.mount_all(ChatMessage(m["role"], m["content"], self._title(m["role"]))
                                        for m in self.conversation.messages)
        self.transcript.scroll_end(animate=False)

    async def show_error(self, message: str) -> None:
        await self.transcript.mount(ChatMessage("error", message))
        self.transcript.scroll_end(animate=False)

    # sending and streaming

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.streaming:
            self.notify("A reply is streaming: wait for it, or press Esc to stop it.", severity="warning")
            return
        event.input.value = ""
        self.conversation.messages.append({"role": "user", "content": text})
        await self.transcript.mount(ChatMessage("user", text))
        await self.start_reply()

    async def start_reply(self) -> None:
        if self.app.client is None:
            await self.show_error("Not connected to the daemon.")
            return
        widget = ChatMessage("assistant", "", self._title("assistant"))
        await self.transcript.mount(widget)
        self.transcript.scroll_end(animate=False)
        self.streaming = True
        self.stop_event.clear()
        params = {"temperature": self.conversation.temperature, "max_tokens": self.conversation.max_tokens,
                  "stream_options": {"include_usage": True}, **self.request_extra}
        self.stream_reply(self.conversation, params, widget)

    @work(thread=True, exclusive=True, group="reply")
    def stream_reply(self, conversation: Conversation, params: dict, widget: ChatMessage) -> None:
        worker = get_current_worker()
        stats, finish, error = ReplyStats(time.perf_counter()), None, None
        try:
            stats = self._load(conversation.model)
            stream = self.app.client.chat_stream(conversation.model, conversation.request_messages(), **params)
            try:
                for chunk in stream:
                    if self.stop_event.is_set() or worker.is_cancelled:
                        finish = "stopped"
                        break
                    if chunk.get("usage"):
                        stats.completion_tokens = chunk["usage"].get("completion_tokens")
                    for choice in chunk.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
                        delta = (choice.get("delta") or {}).get("content") or ""
                        if delta:
                            now = time.perf_counter()
                            stats.first = stats.first or now
                            stats.last = now
                            stats.chunks += 1
                            self._from_thread(self.add_delta, widget, delta, stats)
            finally:
                stream.close()   # early close aborts the request in the daemon
        except DaemonError as e:
            error = e
        except Exception as e:  # noqa: BLE001  (a malformed chunk: said in the chat, never a traceback)
            error = DaemonError(f"unexpected answer from the daemon: {type(e).__name__}: {e}", status=0)
        self._from_thread(self.end_reply, conversation, widget, stats, finish, error)

    def _load(self, model: str) -> ReplyStats:
        """Loads the model first when the last status poll did not show it ready, saying so on the stats line,
        so that the reply's time to first token is the engine's and the load is shown apart. Returns the reply's
        stats, started after the load."""
        if model in self.app.ready_models or model in ready_models(self.app.client.status()):   # polled, or now
            return ReplyStats(time.perf_counter())
        self._from_thread(lambda: self.show_stats(reply=f"loading {short_model(model)}…"))
        started = time.perf_counter()
        self.app.client.load(model)
        loaded = time.perf_counter()
        self.app.ready_models.add(model)   # until the next poll says otherwise
        return ReplyStats(loaded, load_s=loaded - started)

    def _from_thread(self, callback, *args) -> None:
        try:
            self.app.call_from_thread(callback, *args)
        except RuntimeError:   # the app is gone
            self.stop_event.set()

    async def add_delta(self, widget: ChatMessage, delta: str, stats: ReplyStats) -> None:
        await widget.append(delta)
        self.show_stats(reply=reply_text(stats.tokens_per_s(), stats.ttft(), streaming=True))
        if self.transcript.max_scroll_y - self.transcript.scroll_y < 3:
            self.transcript.scroll_end(animate=False)

    async def end_reply(self, conversation: Conversation, widget: ChatMessage, stats: ReplyStats,
                        finish: str | None, error: DaemonError | None) -> None:
        """The reply joins the conversation it was asked in (even if another one is open by now)."""
        self.streaming = False
        self.last_stats = stats
        if widget.content:
            conversation.messages.append({"role": "assistant", "content": widget.content})
            self._save(conversation)
        if conversation is not self.conversation:
            return
        self.show_stats(reply=reply_text(stats.tokens_per_s(), stats.ttft()))
        if widget.content:
            tokens = stats.completion_tokens or stats.chunks
            note = {"stopped": "stopped", "length": f"{tokens} tokens (limit)"}.get(finish or "", f"{tokens} tokens")
            widget.set_footnote(note if stats.load_s is None else f"model loaded in {stats.load_s:.1f} s · {note}")
        elif error is None:
            widget.set_footnote("stopped" if finish == "stopped" else "empty reply")
        if error is not None:
            if not widget.content:
                await widget.remove()
            await self.report(error)
        self.transcript.scroll_end(animate=False)

    async def report(self, error: DaemonError) -> None:
        if error.status is None:          # no answer at all: the daemon is down
            await self.show_error(f"{error}")
            self.app.offer_start(str(error))
        elif error.status == 404:
            await self.show_error(f"{error}\nPick another model with Ctrl+O.")
        elif error.status:
            await self.show_error(f"The daemon refused the request: {error}")
        else:
            await self.show_error(str(error))

    def _save(self, conversation: Conversation) -> None:
        try:
            conversations.save(conversation)
        except OSError as e:
            self.notify(f"Could not save the chat: {e}", severity="error")

    # actions

    def action_stop(self) -> None:
        if self.streaming:
            self.stop_event.set()

    async def action_regenerate(self) -> None:
        if self.streaming:
            self.notify("Stop the current reply first (Esc).", severity="warning")
            return
        messages = self.conversation.messages
        if messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if not messages or messages[-1]["role"] != "user":
            self.notify("Nothing to regenerate.")
            return
        await self.rebuild()
        await self.start_reply()

    async def action_edit_last(self) -> None:
        if self.streaming:
            self.notify("Stop the current reply first (Esc).", severity="warning")
            return
        messages = self.conversation.messages
        index = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
        if index is None:
            return
        prompt = self.query_one(PromptInput)
        prompt.value = messages[index]["content"]
        prompt.cursor_position = len(prompt.value)
        del messages[index:]
        await self.rebuild()
        prompt.focus()

    def action_copy_reply(self) -> None:
        reply = next((m["content"] for m in reversed(self.conversation.messages) if m["role"] == "assistant"), None)
        if reply is None:
            self.notify("No reply to copy yet.")
            return
        self.app.copy_to_clipboard(reply)
        self.notify("Reply copied to the clipboard.")

    def action_models(self) -> None:
        def chosen(model: str | None) -> None:
            if model and model != self.conversation.model:
                self.set_model(model)
        self.app.push_screen(ModelPicker(self.conversation.model), chosen)

    def set_model(self, model: str) -> None:
        self.conversation.model = model
        self.show_stats(model=model, daemon="…")
        self.notify(f"Now chatting with {short_model(model)}.")
        self.app.poll_status()

    def action_chats(self) -> None:
        async def chosen(conversation_id: str | None) -> None:
            if conversation_id:
                await self.open_conversation(conversation_id)
        self.app.push_screen(ChatsScreen(), chosen)

    async def open_conversation(self, conversation_id: str) -> None:
        try:
            conversation = conversations.load(conversation_id)
        except (OSError, ValueError, TypeError) as e:
            self.notify(f"Could not open that chat: {e}", severity="error")
            return
        self.stop_event.set()
        self.conversation = conversation
        self.show_stats(model=conversation.model, reply=reply_text(None, None))
        await self.rebuild()

    def action_settings(self) -> None:
        c = self.conversation

        def chosen(values: dict | None) -> None:
            if values:
                c.temperature, c.max_tokens, c.system = values["temperature"], values["max_tokens"], values["system"]
                self.notify("Settings saved.")
        self.app.push_screen(SettingsScreen(c.temperature, c.max_tokens, c.system), chosen)

    async def action_new_chat(self) -> None:
        self.stop_event.set()
        c = self.conversation
        self.conversation = Conversation(model=c.model, system=c.system, temperature=c.temperature,
                                         max_tokens=c.max_tokens)
        self.show_stats(reply=reply_text(None, None))
        await self.rebuild()

    def action_save(self) -> None:
        if self.conversation.messages:
            self._save(self.conversation)
            self.notify("Chat saved.")
