"""`localllm chat` (localllm.tui) driven with Textual's Pilot against a real daemon running two tiny random
models, plus SVG snapshots of the chat screen with fixed content (a fake client: no live numbers)."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from daemon_helpers import running_daemon
from localllm.client import find_daemon, stop_daemon
from localllm.tui import conversations
from localllm.tui.app import ChatApp
from localllm.tui.conversations import Conversation
from localllm.tui.screens.chats import ChatsScreen
from localllm.tui.screens.models import ModelPicker
from localllm.tui.screens.settings import SettingsScreen
from localllm.tui.widgets.message import ChatMessage
from localllm.tui.widgets.stats_bar import StatsBar, daemon_text
from textual.widgets import Markdown, OptionList
from tiny_models import build_model_dir

GREEDY = {"temperature": 0, "max_tokens": 12}
EXTRA = {"ignore_eos": True}   # random weights: without it a reply may end at once


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tui-models")
    return [str(build_model_dir("llama", root / "tiny-llama")), str(build_model_dir("qwen2", root / "tiny-qwen"))]


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("tui-daemon"), models=models) as d:
        yield d


@pytest.fixture(scope="module")
def client(daemon):
    with daemon.client() as c:
        yield c


def api_reply(client, model, messages, max_tokens=12):
    return client.chat(model, messages, temperature=0, max_tokens=max_tokens, **EXTRA)["choices"][0]["message"]["content"]


def run(coroutine):
    return asyncio.run(coroutine)


async def until(pilot, condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def make_app(client, model, **kwargs):
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 12)
    return ChatApp(model, client=client, request_extra=EXTRA, poll_interval=0.2, **kwargs)


async def send(pilot, app, text):
    chat = app.chat
    before = len(chat.conversation.messages)
    await pilot.click("#prompt")
    await pilot.press(*text, "enter")
    await until(pilot, lambda: not chat.streaming and len(chat.conversation.messages) == before + 2, what="a reply")
    return chat.conversation.messages[-1]["content"]


def assistant_widgets(app):
    return [w for w in app.chat.query(ChatMessage) if w.role == "assistant"]


def test_streamed_reply_equals_the_api_and_history_carries_over(client, models):
    async def go():
        app = make_app(client, models[0], system="Be brief.")
        async with app.run_test(size=(80, 24)) as pilot:
            first = await send(pilot, app, "The quick brown fox")
            messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]
            assert first and first == api_reply(client, models[0], messages)
            widget = assistant_widgets(app)[-1]
            assert widget.content == first and widget.query_one(Markdown).source == first
            second = await send(pilot, app, "Paged attention")
            messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "Paged attention"}]
            assert second == api_reply(client, models[0], messages)
            stats = str(app.chat.query_one(StatsBar).render())
            assert "tok/s" in stats and "TTFT" in stats and "ms" in stats
            await until(pilot, lambda: "KV " in str(app.chat.query_one(StatsBar).render()), what="daemon stats")
    run(go())


def test_a_model_not_loaded_is_loaded_before_the_first_message_and_its_load_is_shown_apart(client, models):
    client.unload(models[1])

    async def go():
        app = make_app(client, models[1])
        async with app.run_test(size=(80, 24)) as pilot:
            await send(pilot, app, "Hello")
            note = assistant_widgets(app)[-1].border_subtitle
            assert note.startswith("model loaded in ") and note.endswith(" s · 12 tokens (limit)"), note
            assert models[1] in {m["name"] for m in client.status()["models"]}
            await send(pilot, app, "Again")
            assert assistant_widgets(app)[-1].border_subtitle == "12 tokens (limit)"   # loaded: nothing to say
    run(go())


class SlowReader:
    """The real client, reading the stream at 50 chunks/s at most, so that Esc lands before the daemon is done."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def chat_stream(self, *args, **kwargs):
        stream = self.client.chat_stream(*args, **kwargs)
        try:
            for chunk in stream:
                time.sleep(0.02)
                yield chunk
        finally:
            stream.close()


def test_escape_stops_a_reply_midway(client, daemon, models):
    async def go():
        app = make_app(SlowReader(client), models[0], max_tokens=400)   # the tiny daemon's KV pool holds 512 tokens
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.click("#prompt")
            await pilot.press(*"Tell a long story", "enter")
            await until(pilot, lambda: assistant_widgets(app) and assistant_widgets(app)[-1].content, what="first delta")
            await pilot.press("escape")
            await until(pilot, lambda: not app.chat.streaming, what="the stop")
            widget = assistant_widgets(app)[-1]
            assert widget.border_subtitle == "stopped"
            assert app.chat.conversation.messages[-1] == {"role": "assistant", "content": widget.content}
            assert app.chat.last_stats.chunks < 400
    run(go())
    daemon.wait_until(lambda s: s["running"] == 0, 15, "the aborted request to leave the engine")


def test_regenerate_and_edit_the_last_message(client, models):
    async def go():
        app = make_app(client, models[0])
        async with app.run_test(size=(80, 24)) as pilot:
            reply = await send(pilot, app, "Continuous batching")
            await pilot.press("ctrl+r")
            await until(pilot, lambda: not app.chat.streaming and len(app.chat.conversation.messages) == 2,
                        what="the regenerated reply")
            assert app.chat.conversation.messages[-1]["content"] == reply   # greedy: the same again
            await pilot.press("ctrl+y")
            assert app.clipboard == reply
            assert len(assistant_widgets(app)) == 1
            await pilot.press("up")   # empty input: take the last message back
            assert app.chat.query_one("#prompt").value == "Continuous batching"
            assert app.chat.conversation.messages == [] and not assistant_widgets(app)
            await pilot.press(*" lets", "enter")
            await until(pilot, lambda: not app.chat.streaming and len(app.chat.conversation.messages) == 2)
            assert app.chat.conversation.messages[0]["content"] == "Continuous batching lets"
            assert app.chat.conversation.messages[1]["content"] == api_reply(
                client, models[0], [{"role": "user", "content": "Continuous batching lets"}])
    run(go())


def test_switch_model_with_the_picker(client, models):
    async def go():
        app = make_app(client, models[0])
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+o")
            await until(pilot, lambda: isinstance(app.screen, ModelPicker)
                        and app.screen.query_one(OptionList).option_count >= 2, what="the model list")
            options = app.screen.query_one(OptionList)
            ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
            assert models[0] in ids and models[1] in ids and "smollm2:135m" in ids
            options.highlighted = ids.index(models[1])
            await pilot.press("enter")
            await until(pilot, lambda: app.screen is app.chat, what="the picker to close")
            assert app.chat.conversation.model == models[1]
            reply = await send(pilot, app, "The quick brown fox")
            assert reply == api_reply(client, models[1], [{"role": "user", "content": "The quick brown fox"}])
            assert assistant_widgets(app)[-1].border_title == "tiny-qwen"
    run(go())


def test_save_reopen_and_delete_a_conversation(client, models):
    async def go():
        app = make_app(client, models[0])
        async with app.run_test(size=(80, 24)) as pilot:
            reply = await send(pilot, app, "Paged attention keeps")
            saved_id = app.chat.conversation.id
            on_disk = json.loads((conversations.chats_dir() / f"{saved_id}.json").read_text())
            assert on_disk["messages"][-1]["content"] == reply and on_disk["model"] == models[0]
            await pilot.press("ctrl+n")
            await until(pilot, lambda: not app.chat.query(ChatMessage), what="a new chat")
            await pilot.press("ctrl+l")
            await until(pilot, lambda: isinstance(app.screen, ChatsScreen))
            options = app.screen.query_one(OptionList)
            ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
            options.highlighted = ids.index(saved_id)
            await pilot.press("enter")
            await until(pilot, lambda: app.chat.conversation.id == saved_id and len(app.chat.query(ChatMessage)) == 2,
                        what="the chat to reopen")
            assert [w.content for w in app.chat.query(ChatMessage)] == ["Paged attention keeps", reply]
            await pilot.press("ctrl+l")
            await until(pilot, lambda: isinstance(app.screen, ChatsScreen))
            options = app.screen.query_one(OptionList)
            options.highlighted = [options.get_option_at_index(i).id
                                   for i in range(options.option_count)].index(saved_id)
            await pilot.press("d")
            await pilot.pause()
            assert not (conversations.chats_dir() / f"{saved_id}.json").exists()
    run(go())


def test_missing_model_is_said_in_the_chat(client):
    async def go():
        app = make_app(client, "no-such-model")
        async with app.run_test(size=(80, 24)) as pilot:
            errors = lambda: [w.content for w in app.chat.query(ChatMessage) if w.role == "error"]
            await until(pilot, lambda: errors(), what="the error")
            assert "no-such-model" in errors()[0] and "not available" in errors()[0]
            await pilot.click("#prompt")
            await pilot.press(*"hi", "enter")
            await until(pilot, lambda: len(errors()) == 2 and not app.chat.streaming, what="the refusal")
            assert "Ctrl+O" in errors()[1] and not assistant_widgets(app)
    run(go())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_without_a_daemon_the_chat_starts_one_at_localllm_host(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))   # no daemon runs under this home
    port = free_port()
    monkeypatch.setenv("LOCALLLM_HOST", f"127.0.0.1:{port}")

    async def go():
        app = ChatApp("tiny", poll_interval=0)   # no client: it must find or start the daemon itself
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.client is not None, timeout=90, what="the daemon")
            errors = lambda: [w.content for w in app.chat.query(ChatMessage) if w.role == "error"]
            await until(pilot, lambda: errors(), what="the daemon's answer about the model")
            assert "'tiny' is not available" in errors()[0]
            assert app.screen is app.chat   # no dialog on the way
    try:
        run(go())
        state = find_daemon()
        assert state is not None and (state.host, state.port) == ("127.0.0.1", port)
        assert state.url == f"http://127.0.0.1:{port}"
    finally:
        assert stop_daemon() is not None


def test_a_daemon_that_cannot_start_ends_the_chat_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALLLM_HOST", "127.0.0.1:port")

    async def go():
        app = ChatApp("tiny", poll_interval=0)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: not app.is_running, what="the app to quit")
        return app
    app = run(go())
    assert app.return_code == 1 and app.return_value.startswith("Error: $LOCALLLM_HOST='127.0.0.1:port' is not usable")
    assert find_daemon() is None


# snapshots: a fake client with fixed models and status, so nothing in the picture changes between runs

class FixedClient:
    url = "http://127.0.0.1:11435"
    STATUS = {"models": [{"name": "tiny-llama", "state": "ready", "device": "cuda:0", "dtype": "bfloat16",
                          "quantization": "Q4_K_M", "param_bytes": 4_920_000_000,
                          "gpus": [{"device": "cuda:0"}, {"device": "cuda:1"}],
                          "kv_blocks": {"total": 1456, "used": 0, "cached": 24, "free": 1432, "block_size": 16},
                          "prefix_cache": {"queries": 4, "hits": 3, "hit_rate": 0.75}, "memory_bytes": 612_000_000}]}

    def models(self):
        return ["tiny-llama", "smollm2:135m"]

    def tags(self):   # what the daemon lists with sizes: the embedded model's file is here, tiny-llama's not
        return [{"name": "smollm2:135m", "size": 98362432, "details": {"quantization_level": "Q4_1"}}]

    def status(self):
        return self.STATUS

    def chat_stream(self, model, messages, **params):
        yield {"choices": [{"delta": {"content": "Fixed."}, "finish_reason": "stop"}]}

    def close(self):
        pass


FIXED_CHAT = Conversation(model="tiny-llama", id="snapshot", messages=[
    {"role": "user", "content": "How do I read a file in Python?"},
    {"role": "assistant", "content": "Use `open` in a `with` block:\n\n```python\nwith open(\"notes.txt\") as f:\n"
                                     "    text = f.read()\n```\n\nThe file is **closed** when the block ends."},
])


def fixed_app():
    return ChatApp(client=FixedClient(), conversation=Conversation.from_dict(vars(FIXED_CHAT) | {"messages": [
        dict(m) for m in FIXED_CHAT.messages]}), poll_interval=0)


def test_snapshot_chat_screen(snap_compare):
    async def settle(pilot):
        await until(pilot, lambda: "KV " in str(pilot.app.chat.query_one(StatsBar).render()), what="stats")
        await pilot.pause()
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=settle)


def test_snapshot_model_picker(snap_compare):
    async def open_picker(pilot):
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(pilot.app.screen, ModelPicker)
                    and pilot.app.screen.query_one(OptionList).option_count == 2, what="the model list")
        await pilot.pause()
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=open_picker)


def test_settings_modal_validates_and_applies():
    async def go():
        app = fixed_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+t")
            await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#temperature").value = "hot"
            await pilot.click("#save")
            assert "must be a number" in str(app.screen.query_one("#settings-error").render())
            app.screen.query_one("#temperature").value = "0.2"
            app.screen.query_one("#max-tokens").value = "64"
            app.screen.query_one("#system").value = "Answer in French."
            await pilot.click("#system")
            await pilot.press("enter")   # Enter in a field saves too
            await until(pilot, lambda: app.screen is app.chat, what="the modal to close")
            c = app.chat.conversation
            assert (c.temperature, c.max_tokens, c.system) == (0.2, 64, "Answer in French.")
            assert c.request_messages()[0] == {"role": "system", "content": "Answer in French."}
    run(go())


def test_daemon_text_formats_status():
    status = FixedClient.STATUS
    assert daemon_text(status, "tiny-llama") == "GPU 0,1 · KV 0/1456 · prefix 75% · mem 583.6 MiB"
    on_cpu = {"models": [dict(status["models"][0], device="cpu", gpus=[])]}
    assert daemon_text(on_cpu, "tiny-llama").startswith("CPU · KV 0/1456")
    split_on_cpu = {"models": [dict(on_cpu["models"][0], tensor_parallel_size=3)]}
    assert daemon_text(split_on_cpu, "tiny-llama").startswith("CPU (3 ranks) · KV 0/1456")
    assert daemon_text(status, "other").startswith("not loaded")
    assert daemon_text(None, "x", "unreachable") == "daemon: unreachable"


def test_chat_command_is_registered():
    from typer.testing import CliRunner

    from localllm.cli.main import app

    result = CliRunner().invoke(app, ["chat", "--help"])
    assert result.exit_code == 0 and "terminal UI" in result.output
