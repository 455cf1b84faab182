"""Pulling through the daemon (/api/pull, what `localllm pull`, the chat app and Ollama's clients use) from the
fake Hub (tests/fake_hub.py): progress lines in Ollama's shape, one download when two clients ask at once with
the progress shown to both, errors before and during the stream, copy and delete."""
from __future__ import annotations

import threading

import ollama
import pytest

from daemon_helpers import running_daemon
from fake_hub import hub, tiny_model_dir  # noqa: F401 (hub is a fixture)
from localllm.client import DaemonError
from localllm.hub import store

REPO = "test-org/tiny-qwen3"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture
def daemon(hub, tiny_dir, tmp_path):
    """A daemon started inside the fake Hub's environment (HF_ENDPOINT, an empty LOCALLLM_HOME)."""
    hub.add_dir(REPO, tiny_dir)
    with running_daemon(tmp_path / "daemon") as d:
        yield d


def file_lines(events: list[dict], filename: str) -> list[dict]:
    return [e for e in events if e.get("digest") == filename]


def test_the_ollama_client_pulls_with_progress_then_lists_shows_and_deletes(daemon, hub, tiny_dir):
    client = ollama.Client(host=daemon.url, timeout=120)
    events = [p.model_dump(exclude_none=True) for p in client.pull(REPO, stream=True)]
    assert events[0] == {"status": f"pulling manifest of {REPO}"} and events[-1] == {"status": "success"}
    size = (tiny_dir / "model.safetensors").stat().st_size
    weights = file_lines(events, "model.safetensors")
    assert weights[-1] == {"status": "pulling model.safetensors", "digest": "model.safetensors", "total": size,
                           "completed": size}
    assert all(0 <= e["completed"] <= size for e in weights)
    assert {"status": "verifying sha256 digest"} in events and {"status": "writing manifest"} in events
    (listed,) = [m for m in client.list().models if m.model == REPO]
    assert listed.size == store.find(REPO).size and listed.details.quantization_level == "F32"
    assert client.show(REPO).modelinfo["qwen3.context_length"] == 1024
    answer = client.generate(REPO, "The quick brown fox", raw=True, options={"temperature": 0, "num_predict": 3})
    assert answer.eval_count == 3   # the daemon loads what it just pulled
    assert client.pull(REPO).status == "success"   # again, not streamed: the files are there already
    assert hub.fetched(REPO, "model.safetensors", "GET") == [None]   # downloaded once
    # a second name (hf.co/ and :latest as Ollama writes names), its files shared; answering as the first does
    assert client.copy(f"hf.co/{REPO}", "mine:latest").status == "success"
    assert store.find("mine").files == store.find(REPO).files
    assert client.generate("mine", "The quick brown fox", raw=True,
                           options={"temperature": 0, "num_predict": 3}).response == answer.response
    for source, destination, status in ((REPO, "mine", 400), ("nothing", "x", 404), (REPO, "../x", 400)):
        with pytest.raises(ollama.ResponseError) as refused:
            client.copy(source, destination)
        assert refused.value.status_code == status, refused.value.error
    assert client.delete("mine").status == "success" and store.find(REPO) is not None
    assert client.delete(REPO).status == "success"
    assert REPO not in [m.model for m in client.list().models] and store.find(REPO) is None
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete(REPO)
    assert gone.value.status_code == 404


def _hold_the_weights(hub) -> tuple[threading.Event, threading.Event]:
    """The fake Hub holds the weights' body until `release` is set; `reached` is set once a download waits there."""
    reached, release = threading.Event(), threading.Event()

    def hold(repo_id, filename):
        if filename == "model.safetensors":
            reached.set()
            release.wait(30)
    hub.before_body = hold
    return reached, release


def test_two_clients_share_one_download_and_both_see_its_progress(daemon, hub):
    reached, release = _hold_the_weights(hub)
    seen: dict[str, list[dict]] = {"first": [], "second": []}

    def follow(who: str) -> None:
        with daemon.client() as client:
            seen[who].append(client.pull_to_end(REPO, on_progress=seen[who].append))
    first = threading.Thread(target=follow, args=("first",))
    first.start()
    assert reached.wait(30)
    second = threading.Thread(target=follow, args=("second",))
    second.start()
    while not seen["second"]:   # the second client has joined: it got the progress so far
        assert second.is_alive()
        second.join(0.05)
    release.set()
    first.join(60)
    second.join(60)
    assert hub.fetched(REPO, "model.safetensors", "GET") == [None]
    for events in seen.values():
        assert events[-1]["name"] == REPO and events[-1]["details"]["quantization_level"] == "F32"
        progress = file_lines(events, "model.safetensors")
        assert progress[0]["completed"] == 0 and progress[-1]["completed"] == progress[-1]["total"]
    assert seen["second"][:len(seen["first"]) - 1] == seen["first"][:-1]   # the same lines, from the start


def test_failures_before_and_during_the_stream(daemon):
    client = ollama.Client(host=daemon.url, timeout=120)
    with pytest.raises(ollama.ResponseError) as invalid:
        client.pull("org/../../etc/passwd")
    assert invalid.value.status_code == 400 and "'..' is not allowed" in invalid.value.error
    with pytest.raises(ollama.ResponseError) as missing:
        client.pull("test-org/missing")   # not streamed: the failure's own status
    assert missing.value.status_code == 404 and "not found on http://127.0.0.1" in missing.value.error
    with pytest.raises(ollama.ResponseError, match="test-org/missing"):
        list(client.pull("test-org/missing", stream=True))   # streamed: an error line
    with daemon.client() as ours, pytest.raises(DaemonError, match="test-org/missing.*not found"):
        ours.pull_to_end("test-org/missing")


def test_a_pull_goes_on_when_its_client_leaves(daemon, hub):
    reached, release = _hold_the_weights(hub)
    with daemon.client() as client:
        lines = client.pull(REPO)
        next(lines)
        assert reached.wait(30)
        lines.close()   # the client leaves mid-download
    release.set()
    with daemon.client() as client:   # following it again: it finished, or joins it in flight
        assert client.pull_to_end(REPO)["name"] == REPO
    assert hub.fetched(REPO, "model.safetensors", "GET") == [None]


def test_progress_lines_take_what_huggingface_hub_reports():
    """The calls huggingface_hub makes on a bar, plain HTTP and Xet alike, become Ollama's progress lines: the
    first and the last always, the ones between at most every PROGRESS_EVERY_S."""
    from types import SimpleNamespace

    from localllm.server.pulls import _JobReporter

    lines: list[dict] = []
    bar = _JobReporter(SimpleNamespace(post=lines.append)).bar_class("model.safetensors", 100)(
        unit="B", unit_scale=True, total=None, initial=10, desc="(…)model.safetensors")
    bar.update(40)
    bar.update_transfer(35)
    bar.set_postfix_str("1 MB/s", refresh=False)
    bar.total = max(bar.total or 0, 120)
    bar.update(70)
    bar.close()
    assert [(line["completed"], line["total"]) for line in lines] == [(10, 100), (120, 120)]
    assert lines[-1] == {"status": "pulling model.safetensors", "digest": "model.safetensors", "total": 120,
                         "completed": 120}
