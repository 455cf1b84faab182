"""The model picker of `localllm chat` (Ctrl+O): sizes and formats as the daemon lists them, and pulling a model
from the fake Hub (tests/fake_hub.py) through the Pull dialog, which pulls through the daemon, with Textual's
Pilot against a real daemon."""
from __future__ import annotations

import threading

import pytest
from textual.widgets import Input, OptionList, ProgressBar

from daemon_helpers import running_daemon
from fake_hub import hub, tiny_model_dir  # noqa: F401 (hub is a fixture)
from localllm.hub.embedded import EMBEDDED_ALIAS
from localllm.tui.app import ChatApp
from localllm.tui.screens.models import ModelPicker
from localllm.tui.screens.pull import PullScreen
from localllm.units import format_size
from test_tui import run, send, until

REPO = "test-org/tiny-qwen3"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture
def client(hub, tiny_dir, tmp_path):
    """A client of a daemon started inside the fake Hub's environment, which serves REPO."""
    hub.add_dir(REPO, tiny_dir)
    with running_daemon(tmp_path / "daemon") as daemon, daemon.client() as client:
        yield client


def options_of(screen) -> dict[str, str]:
    options = screen.query_one(OptionList)
    return {options.get_option_at_index(i).id: str(options.get_option_at_index(i).prompt).replace("\u00a0", " ")
            for i in range(options.option_count)}


async def open_picker(pilot):
    await pilot.press("ctrl+o")
    await until(pilot, lambda: isinstance(pilot.app.screen, ModelPicker)
                and pilot.app.screen.query_one(OptionList).option_count >= 1, what="the model list")
    return pilot.app.screen


async def open_pull(pilot, name):
    await pilot.press("p")
    await until(pilot, lambda: isinstance(pilot.app.screen, PullScreen), what="the pull dialog")
    dialog = pilot.app.screen
    await pilot.press(*name, "enter")
    return dialog


def test_picker_shows_size_and_format_of_pulled_models(client, tiny_dir):
    pulled = client.pull_to_end(REPO)

    async def go():
        app = ChatApp(REPO, client=client, poll_interval=0)
        async with app.run_test(size=(100, 24)) as pilot:
            picker = await open_picker(pilot)
            await until(pilot, lambda: REPO in options_of(picker), what="the pulled model")
            shown = options_of(picker)
            assert format_size(pulled["size"]) in shown[REPO] and "F32" in shown[REPO] and "current" in shown[REPO]
            assert "MiB" in shown[EMBEDDED_ALIAS] and "Q4_1" in shown[EMBEDDED_ALIAS]   # the fetched GGUF
            assert "p: pull" in str(picker.query_one("#model-note").render())
    run(go())


def hold_download(hub):
    """Stops the pull before the weights' bytes are sent until the test lets it go."""
    release, reached = threading.Event(), threading.Event()

    def hold(repo_id, filename):
        if filename == "model.safetensors":
            reached.set()
            release.wait(20)
    hub.before_body = hold
    return release, reached


def test_pull_through_the_dialog_then_pick_it(client, hub, tiny_dir):
    release, reached = hold_download(hub)
    size = (tiny_dir / "model.safetensors").stat().st_size

    async def go(client):
        app = ChatApp(EMBEDDED_ALIAS, client=client, poll_interval=0, temperature=0, max_tokens=4,
                      request_extra={"ignore_eos": True})
        async with app.run_test(size=(100, 24)) as pilot:
            picker = await open_picker(pilot)
            assert REPO not in options_of(picker)
            dialog = await open_pull(pilot, REPO)
            bar = dialog.query_one(ProgressBar)
            await until(pilot, lambda: reached.is_set() and bar.total == size, what="the download to start")
            await pilot.pause(0.15)   # one more tick of the dialog's timer
            assert bar.display and bar.progress == 0
            shown = str(dialog.query_one("#pull-file").render())
            assert shown.startswith("model.safetensors") and format_size(size) in shown and "/" in shown
            assert dialog.query_one(Input).disabled
            release.set()
            await until(pilot, lambda: app.screen is picker and REPO in options_of(picker), what="the refreshed list")
            assert any(str(n.message).startswith(f"Pulled {REPO} (") for n in app._notifications)
            options = picker.query_one(OptionList)
            assert options.get_option_at_index(options.highlighted).id == REPO
            assert "F32" in options_of(picker)[REPO]
            await pilot.press("enter")
            await until(pilot, lambda: app.screen is app.chat, what="the picker to close")
            assert app.chat.conversation.model == REPO
            reply = await send(pilot, app, "The quick brown fox")   # the daemon loads the model just pulled
            assert reply and app.chat.conversation.messages[-1] == {"role": "assistant", "content": reply}

    run(go(client))
    assert REPO in client.models() and any(m["name"] == REPO for m in client.status()["models"])


def test_bad_name_is_one_line_in_the_dialog(client):
    async def go():
        app = ChatApp(EMBEDDED_ALIAS, client=client, poll_interval=0)
        async with app.run_test(size=(100, 24)) as pilot:
            await open_picker(pilot)
            dialog = await open_pull(pilot, "no-such-org/nothing")
            error = dialog.query_one("#pull-error")
            await until(pilot, lambda: error.display, what="the error")
            text = str(error.render())
            assert text.startswith("Error:") and "no-such-org/nothing" in text
            assert "\n" not in text and "Traceback" not in text
            assert not dialog.query_one(ProgressBar).display and not dialog.query_one(Input).disabled
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, ModelPicker), what="back to the picker")
    run(go())


def test_escape_leaves_the_pull_running_in_the_background(client, hub):
    release, reached = hold_download(hub)

    async def go():
        app = ChatApp(EMBEDDED_ALIAS, client=client, poll_interval=0)
        async with app.run_test(size=(100, 24)) as pilot:
            picker = await open_picker(pilot)
            dialog = await open_pull(pilot, REPO)
            await until(pilot, lambda: reached.is_set(), what="the downloads")
            assert "background" in str(dialog.query_one("#pull-note").render())
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is picker, what="back to the picker")
            assert any("background" in str(n.message) for n in app._notifications)
            release.set()
            await until(pilot, lambda: REPO in options_of(picker), what="the list to show the pulled model")
            assert any(str(n.message).startswith(f"Pulled {REPO}") for n in app._notifications)
    run(go())
