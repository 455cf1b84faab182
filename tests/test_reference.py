"""hub.reference.resolve_reference: every kind of model name to one ModelReference, and bad names to one-line
errors; the store and the aliases are set up here, nothing is downloaded."""
from pathlib import Path

import pytest

from localllm.errors import CorruptModelError, InvalidModelNameError, ModelNotFoundError
from localllm.hub import aliases, store
from localllm.hub.embedded import EMBEDDED_ALIAS, stored_gguf
from localllm.hub.reference import resolve_reference


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty store of our own; `alias:test` stands for owner/tiny."""
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(aliases.ALIASES, "alias:test", "owner/tiny")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def stored(name, source, path, ref=None, **kwargs):
    entry = store.ModelEntry(name=name, source=source, path=str(path), size=10, format="F32",
                             modified="2025-01-01T00:00:00+00:00", ref=ref, repo=ref and ref.split(":")[0], **kwargs)
    store.save(entry)
    return entry


def model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.mark.parametrize("name", [None, "smollm2", "SmolLM2:135M", " smollm2:135m-instruct "])
def test_the_embedded_model(home, name):
    reference = resolve_reference(name)
    assert (reference.name, reference.kind, reference.entry) == (EMBEDDED_ALIAS, "embedded", None)
    assert reference.path == stored_gguf() and reference.local_files() == stored_gguf()


def test_local_directories_and_gguf_files(home):
    directory = model_dir(home / "models" / "tiny")
    for name in (str(directory), "./models/tiny", "models/tiny"):   # absolute, ./relative, bare relative
        reference = resolve_reference(name)
        assert (reference.name, reference.kind, reference.path, reference.entry) == ("tiny", "local", directory, None)
    gguf = home / "weights.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    assert resolve_reference("weights.gguf").path == gguf and resolve_reference("weights.gguf").name == "weights"
    renamed = home / "weights.bin"
    renamed.write_bytes(b"GGUF" + bytes(60))     # a GGUF is known by its magic, whatever its name
    assert resolve_reference("./weights.bin").kind == "local"
    (home / "notes.txt").write_text("hello")
    with pytest.raises(ModelNotFoundError, match="'./notes.txt' is not a GGUF file"):
        resolve_reference("./notes.txt")
    with pytest.raises(ModelNotFoundError, match="directory without config.json"):
        resolve_reference(str(home))


def test_aliases_and_hub_repos_not_pulled_yet(home):
    alias = resolve_reference("Alias:Test")
    assert (alias.name, alias.kind, alias.repo, alias.quant, alias.entry) == \
        ("alias:test", "hub", "owner/tiny", None, None)
    assert resolve_reference("qwen3:0.6b-q8_0").ref == "Qwen/Qwen3-0.6B-GGUF:Q8_0"
    repo = resolve_reference("owner/Some-Model-GGUF:q4_k_m", revision="v2")
    assert (repo.name, repo.kind, repo.repo, repo.quant, repo.revision) == \
        ("owner/Some-Model-GGUF:q4_k_m", "gguf", "owner/Some-Model-GGUF", "q4_k_m", "v2")
    with pytest.raises(ModelNotFoundError, match="'alias:test' is not pulled yet; get it with 'localllm pull alias"):
        alias.local_files()


def test_pulled_models_by_their_name_by_alias_and_by_repo_id(home):
    snapshot = model_dir(home / "snapshot")
    entry = stored("owner/tiny", "hub", snapshot, ref="owner/tiny", revision="a" * 40)
    by_name = resolve_reference("OWNER/TINY")
    assert (by_name.name, by_name.kind, by_name.repo, by_name.entry, by_name.path) == \
        ("owner/tiny", "hub", "owner/tiny", entry, snapshot)
    by_alias = resolve_reference("alias:test")   # pulled under the repo id: the alias finds that entry
    assert (by_alias.name, by_alias.entry) == ("alias:test", entry) and by_alias.local_files() == snapshot
    gguf = home / "q8.gguf"
    gguf.write_bytes(b"GGUF")
    gguf_entry = stored("my-q8", "gguf", gguf, ref="owner/tiny-GGUF:Q8_0")
    for name in ("my-q8", "owner/tiny-GGUF:Q8_0"):
        reference = resolve_reference(name)
        assert (reference.kind, reference.repo, reference.quant, reference.entry) == \
            ("gguf", "owner/tiny-GGUF", "Q8_0", gguf_entry)
    local = stored("mine", "local", snapshot)
    assert (resolve_reference("mine").kind, resolve_reference("mine").path) == ("local", snapshot)
    assert resolve_reference("mine").entry == local


def test_a_pulled_model_whose_files_are_gone(home):
    stored("gone", "local", home / "nowhere")
    with pytest.raises(ModelNotFoundError, match="'gone' was pulled but its files are gone"):
        resolve_reference("gone").local_files()


def test_without_paths_a_name_is_only_looked_up(home):
    directory = model_dir(home / "tiny")
    with pytest.raises(InvalidModelNameError):
        resolve_reference(str(directory), paths=False)
    with pytest.raises(InvalidModelNameError):
        resolve_reference("tiny", paths=False)
    stored("tiny", "local", directory)
    assert resolve_reference("tiny", paths=False).entry.path == str(directory)
    assert resolve_reference("smollm2", paths=False).kind == "embedded"


@pytest.mark.parametrize("name, error, message", [
    ("", InvalidModelNameError, "invalid model name ''"),
    ("two words", InvalidModelNameError, "invalid model name 'two words'"),
    ("nul\0", InvalidModelNameError, "invalid model name"),
    ("x" * 2000, InvalidModelNameError, "invalid model name"),
    ("org/../x", InvalidModelNameError, "'..' is not allowed"),
    ("../no-such-dir", InvalidModelNameError, "'..' is not allowed"),
    ("a/b/c", InvalidModelNameError, "model 'a/b/c' not found: it is not an alias"),
    ("org--x/repo", InvalidModelNameError, "not found"),
    ("owner/name:bad/tag", InvalidModelNameError, "not found"),
    ("nothing", InvalidModelNameError, "model 'nothing' not found"),
    ("/no/such/model", ModelNotFoundError, "absolute path but no such file"),
    ("./missing.gguf", ModelNotFoundError, "no such file or directory: './missing.gguf'"),
])
def test_bad_names_are_one_line_errors(home, name, error, message):
    with pytest.raises(error, match=message) as raised:
        resolve_reference(name)
    assert "\n" not in str(raised.value)


def test_an_unreadable_store_is_said(home):
    store.store_dir().mkdir(parents=True)
    (store.store_dir() / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="unreadable"):
        resolve_reference("owner/tiny")
