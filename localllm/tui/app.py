"""`localllm chat`'s app: owns the connection to the daemon (localllm.client) and polls /api/status for the
stats line; the chat itself is ChatScreen."""
from __future__ import annotations

from textual import work
from textual.app import App
from textual.binding import Binding

from localllm.client import Client, DaemonError, ensure_daemon
from localllm.errors import LocalLLMError
from localllm.hub.embedded import EMBEDDED_ALIAS
from localllm.tui.conversations import Conversation
from localllm.tui.screens.chat import ChatScreen
from localllm.tui.widgets.stats_bar import daemon_text, ready_models


class ChatApp(App):
    """`client`: a localllm.client.Client (or anything with its status/models/chat_stream methods); without one
    the app finds the running daemon, or starts one where the settings say ($LOCALLLM_HOST), allowing
    `daemon_models` besides the store's (local paths, as `localllm run` does). `request_extra`: more fields for
    every chat request. `poll_interval`: seconds between /api/status polls (0 = none)."""

    CSS_PATH = "chat.tcss"
    # Textual's quit key, shown in the footer: Ctrl+C does not quit a Textual app
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]
    TITLE = "localllm chat"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, model: str | None = None, *, client: Client | None = None, system: str = "",
                 temperature: float = 0.7, max_tokens: int = 512, conversation: Conversation | None = None,
                 request_extra: dict | None = None, poll_interval: float = 1.0, daemon_models: list[str] = ()):
        super().__init__()
        self.client = client
        self.model_given = model is not None or conversation is not None
        self.conversation = conversation or Conversation(model=model or EMBEDDED_ALIAS, system=system,
                                                         temperature=temperature, max_tokens=max_tokens)
        self.request_extra = request_extra
        self.poll_interval = poll_interval
        self.daemon_models = list(daemon_models)
        self.chat: ChatScreen | None = None
        self.ready_models: set[str] = set()   # as of the last status poll

    def on_mount(self) -> None:
        self.chat = ChatScreen(self.conversation, self.request_extra)
        self.push_screen(self.chat)
        if self.poll_interval > 0:
            self.set_interval(self.poll_interval, self.poll_status)
        if self.client is None:
            self.connect_daemon()
        else:
            self.check_model()

    # the daemon

    @work(thread=True, exclusive=True, group="connect")
    def connect_daemon(self) -> None:
        """The running daemon, or one started now in the background, as `localllm run` does (no question asked:
        the chat needs it). A daemon that cannot start ends the app (return code 1) with its one-line reason as
        the app's result, for the command line to print."""
        try:
            self.client = ensure_daemon(models=self.daemon_models)
        except LocalLLMError as e:
            self.call_from_thread(self.exit, f"Error: {' '.join(str(e).split())}", 1)
            return
        self.check_model()

    @work(thread=True, exclusive=True, group="check")
    def check_model(self) -> None:
        """Default to a loaded model when none was named; say so when the named one is not available."""
        try:
            names = self.client.models()
            loaded = [m["name"] for m in self.client.status().get("models", [])]
        except (DaemonError, KeyError, TypeError, ValueError) as e:
            self.call_from_thread(self.notify, f"The daemon does not answer: {e}", severity="error")
            return
        chat = self.chat
        if not self.model_given and loaded and chat.conversation.model not in loaded:
            self.call_from_thread(chat.set_model, loaded[0])
        elif chat.conversation.model not in names:
            self.call_from_thread(chat.show_error, f"Model '{chat.conversation.model}' is not available in this "
                                                   "daemon (pull it, or pick another with Ctrl+O).")
        self.poll_status()

    @work(thread=True, exclusive=True, group="status")
    def poll_status(self) -> None:
        if self.client is None or self.chat is None:
            return
        model = self.chat.conversation.model
        try:
            status = self.client.status()
            self.ready_models = ready_models(status)
            text = daemon_text(status, model)
        except DaemonError as e:
            text = daemon_text(None, model, "unreachable" if e.status is None else str(e))
        except Exception as e:  # noqa: BLE001  (an odd status: shown, never a traceback)
            text = daemon_text(None, model, f"bad status ({type(e).__name__})")
        try:
            self.call_from_thread(self.chat.show_stats, daemon=text)
        except RuntimeError:
            pass
