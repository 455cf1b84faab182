"""`pull` and the model store against a fake Hub on 127.0.0.1 (tests/fake_hub.py): what is downloaded and what
never is, resume, refusals before any weights move, corruption, GGUF quant tags, names, removal."""
import hashlib
import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from huggingface_hub import constants

from fake_hub import hub, tiny_model_dir  # noqa: F401 (hub is a fixture)
from tiny_models import write_tiny_gguf
from localllm.errors import CorruptModelError, ModelNotFoundError, UnsupportedModelError
from localllm.hub import aliases, store
from localllm.hub.pull import PullError, pull
from localllm.hub.reference import resolve_reference
from localllm.loader.resolve import resolve_model

REPO = "test-org/tiny-qwen3"
GGUF_REPO = "test-org/tiny-GGUF"
# files a real repo often has that a pull must never fetch
UNWANTED = {"pytorch_model.bin": b"\x80\x04pickle" * 50, "README.md": b"# tiny\n", "onnx/model.onnx": b"onnx" * 50}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("ggufs")
    return {"tiny-Q8_0.gguf": write_tiny_gguf(root / "q8.gguf", quant="Q8_0").read_bytes(),
            "tiny-F32.gguf": write_tiny_gguf(root / "f32.gguf").read_bytes()}


@pytest.fixture
def tiny_repo(hub, tiny_dir):
    hub.add_dir(REPO, tiny_dir, extra=UNWANTED)
    return hub


def weights_fetched(hub, repo=REPO) -> list:
    return hub.fetched(repo, "model.safetensors")


def test_pull_fetches_only_what_the_model_needs_and_registers_it(tiny_repo, tiny_dir):
    entry = pull(REPO)
    assert entry.name == REPO and entry.source == "hub" and entry.format == "F32"
    assert entry.architecture == "Qwen3ForCausalLM" and entry.revision == tiny_repo.commits[REPO]
    wanted = sorted(p.name for p in tiny_dir.iterdir())
    assert sorted(entry.files) == wanted
    fetched = {p.rsplit("/", 1)[1] for m, p, _ in tiny_repo.requests if m == "GET" and "/resolve/" in p}
    assert fetched == set(wanted)  # no pickle, README or subfolder files
    snapshot = Path(entry.path)
    for name in wanted:
        assert (snapshot / name).read_bytes() == (tiny_dir / name).read_bytes()
    assert entry.size == sum((tiny_dir / n).stat().st_size for n in wanted)
    assert store.hub_cache_dir() == Path(store.store_dir().parent / "hub")  # HF's cache under our data dir
    assert snapshot.is_relative_to(store.hub_cache_dir())
    manifest = json.loads((store.store_dir() / "manifest.json").read_text())
    assert manifest["models"][REPO]["path"] == str(snapshot)


def test_pulled_alias_and_repo_id_load_with_llm(tiny_repo, monkeypatch):
    from localllm import LLM, SamplingParams

    monkeypatch.setitem(aliases.ALIASES, "tiny:test", REPO)
    entry = pull("TINY:test")
    assert entry.name == "tiny:test"
    assert resolve_model("tiny:test") == resolve_model(REPO) == Path(entry.path)
    out = LLM("tiny:test").generate("The quick brown", SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4


def test_resume_after_the_connection_drops_mid_file(tiny_repo, tiny_dir, monkeypatch):
    # huggingface_hub resumes from the bytes it has written: small chunks so that some are written before the drop
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 << 10)
    tiny_repo.drop_once.add((REPO, "model.safetensors"))
    entry = pull(REPO)
    gets = tiny_repo.fetched(REPO, "model.safetensors", "GET")
    assert len(gets) == 2 and gets[0] is None and gets[1].startswith("bytes=")
    assert int(gets[1].removeprefix("bytes=").rstrip("-")) > 0
    data = (Path(entry.path) / "model.safetensors").read_bytes()
    assert data == (tiny_dir / "model.safetensors").read_bytes()


def test_unsupported_architecture_is_refused_before_any_weights(hub, tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    hub.add_dir("test-org/mamba", tiny_dir, extra={"config.json": json.dumps(config).encode()})
    with pytest.raises(UnsupportedModelError, match="MambaForCausalLM"):
        pull("test-org/mamba")
    assert weights_fetched(hub, "test-org/mamba") == []  # not even a HEAD
    assert store.entries() == []
    assert not (store.hub_cache_dir() / "models--test-org--mamba").exists()  # its config.json was cleaned up


def test_insufficient_disk_space_is_refused_before_download(tiny_repo, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, (10 << 20) - 1000, 1000))
    with pytest.raises(PullError, match=r"not enough disk space .* needs 30\d\.\d KiB, 1000 B are free"):
        pull(REPO)
    assert weights_fetched(tiny_repo) == []
    assert store.entries() == []


def test_corrupt_download_is_detected_removed_and_pulled_again(tiny_repo, tiny_dir):
    tiny_repo.corrupt.add((REPO, "model.safetensors"))
    with pytest.raises(CorruptModelError, match="model.safetensors of test-org/tiny-qwen3 is corrupt .*sha256"):
        pull(REPO)
    assert store.entries() == []
    blobs = store.hub_cache_dir() / "models--test-org--tiny-qwen3" / "blobs"
    sha = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    assert not (blobs / sha).exists()  # the bad blob is gone, or huggingface_hub would keep serving it
    tiny_repo.corrupt.clear()
    entry = pull(REPO)
    assert (Path(entry.path) / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()


def test_gguf_quant_tag_picks_that_file_only(hub, ggufs):
    hub.add_repo(GGUF_REPO, {**ggufs, "README.md": b"# gguf\n"})
    entry = pull(f"{GGUF_REPO}:q8_0")
    assert entry.source == "gguf" and entry.format == "Q8_0" and entry.architecture == "llama"
    assert entry.files == ["tiny-Q8_0.gguf"] and entry.size == len(ggufs["tiny-Q8_0.gguf"])
    assert hub.fetched(GGUF_REPO, "tiny-F32.gguf") == []
    probe, *rest = hub.fetched(GGUF_REPO, "tiny-Q8_0.gguf", "GET")
    assert probe == "bytes=0-262143" and rest == [None]  # header first, then the file once
    model_dir = resolve_model(f"{GGUF_REPO}:q8_0")  # converted into a cached HF-style directory
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    _, freed = store.remove(f"{GGUF_REPO}:q8_0")
    assert not model_dir.exists() and freed > len(ggufs["tiny-Q8_0.gguf"])


def test_gguf_repo_without_a_tag_needs_one_when_it_holds_several(hub, ggufs):
    hub.add_repo(GGUF_REPO, ggufs)
    with pytest.raises(PullError, match="several GGUF files.*tags: F32, Q8_0"):
        pull(GGUF_REPO)
    with pytest.raises(ModelNotFoundError, match="no .gguf file tagged Q4_K_M"):
        pull(f"{GGUF_REPO}:Q4_K_M")


def test_unsupported_gguf_architecture_is_refused_from_its_header(hub, tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(path, "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((256, 256), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hub.add_repo("test-org/mamba-GGUF", {"mamba-F32.gguf": path.read_bytes()})
    with pytest.raises(UnsupportedModelError, match="GGUF architecture 'mamba'"):
        pull("test-org/mamba-GGUF:F32")
    assert hub.fetched("test-org/mamba-GGUF", "mamba-F32.gguf") == ["bytes=0-262143"]  # the header, nothing else


@pytest.mark.parametrize("name", ["test-org/../../etc", "../no-such-dir", "..:latest", "a/b/c", "org/repo:../x",
                                  "/no/such/absolute/path", "org--x/repo", "bad name"])
def test_names_that_could_escape_are_refused(hub, name):
    with pytest.raises(ModelNotFoundError) as error:
        pull(name)
    assert "\n" not in str(error.value)
    assert hub.requests == []


def test_local_paths_are_only_local_paths(hub, tiny_dir, tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a model"):
        pull(str(tmp_path))  # an existing directory without config.json
    entry = pull(str(tiny_dir))
    assert entry.source == "local" and entry.path == str(tiny_dir.resolve()) and hub.requests == []
    assert resolve_model(entry.name) == tiny_dir.resolve()
    store.remove(entry.name)
    assert (tiny_dir / "model.safetensors").is_file()  # a local model's files are never deleted


def test_embedded_alias_needs_no_download(hub):
    entry = pull("smollm2:135m")
    assert entry.source == "embedded" and entry.format == "Q4_1" and hub.requests == []
    assert entry.name == "smollm2:135m" and resolve_reference("smollm2").local_files() == Path(entry.path)


def test_missing_repo_and_revision_are_one_line_errors(tiny_repo):
    with pytest.raises(ModelNotFoundError, match="model 'test-org/nothing' not found on http://127.0.0.1"):
        pull("test-org/nothing")
    with pytest.raises(ModelNotFoundError, match="revision 'v9' of test-org/tiny-qwen3 not found"):
        pull(REPO, revision="v9")


def test_rm_frees_only_what_no_other_model_uses(tiny_repo, monkeypatch):
    monkeypatch.setitem(aliases.ALIASES, "tiny:test", REPO)
    first, second = pull(REPO), pull("tiny:test")  # two names, one snapshot
    repo_folder = store.hub_cache_dir() / "models--test-org--tiny-qwen3"
    _, freed = store.remove(REPO)
    assert freed == 0 and (Path(second.path) / "model.safetensors").is_file()
    _, freed = store.remove("tiny:test")
    assert freed == first.size and not repo_folder.exists()
    assert store.entries() == []
    with pytest.raises(ModelNotFoundError):
        store.remove("tiny:test")


def test_the_users_own_huggingface_cache_is_used_when_set(tiny_repo, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    entry = pull(REPO)
    assert Path(entry.path).is_relative_to(tmp_path / "hf-home" / "hub")


def test_pulling_a_new_revision_replaces_the_old_files(tiny_repo, tiny_dir):
    old = pull(REPO)
    repo_folder = store.hub_cache_dir() / "models--test-org--tiny-qwen3"
    assert (repo_folder / "refs" / "main").read_text() == old.revision  # the cache reads as huggingface_hub's own
    tiny_repo.add_dir(REPO, tiny_dir, extra={"generation_config.json": b'{"eos_token_id": 1}'})
    new = pull(REPO)
    assert new.revision != old.revision and (repo_folder / "refs" / "main").read_text() == new.revision
    assert not Path(old.path).exists() and [e.revision for e in store.entries()] == [new.revision]
    # the unchanged files share their blobs with the new snapshot: only the old generation config is gone
    assert len(list((repo_folder / "blobs").iterdir())) == len(new.files)


@pytest.fixture
def offline_user(monkeypatch):
    """A user who keeps HF_HUB_OFFLINE=1 (and TRANSFORMERS_OFFLINE) in their shell, set before `hub` runs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)   # as huggingface_hub read it at import


def test_the_fake_hub_works_whatever_hf_variables_the_user_has_set(offline_user, hub, tiny_dir):
    hub.add_dir(REPO, tiny_dir)
    entry = pull(REPO)
    assert entry.repo == REPO and store.find(REPO) == entry


def test_pulling_an_embedding_model_brings_its_sentence_transformers_files(hub, tmp_path):
    from localllm import LLM
    from localllm.loader.pooling_config import read_pooling_config
    from tiny_models import build_embedding_model_dir

    model_dir = build_embedding_model_dir(tmp_path / "tiny-embedding", "last")
    (model_dir / "config_sentence_transformers.json").write_text('{"prompts": {"query": "Query: "}}')
    hub.add_dir("Qwen/Qwen3-Embedding-0.6B", model_dir, extra={**UNWANTED, "2_Dense/model.safetensors": b"x" * 64})
    entry = pull("qwen3-embedding:0.6b")   # the alias of the real repo, served by the fake Hub
    assert {"modules.json", "1_Pooling/config.json", "config_sentence_transformers.json"} <= set(entry.files)
    assert not any(name.startswith("2_Dense") for name in entry.files)
    pooling = read_pooling_config(Path(entry.path))
    # Qwen3-Embedding is trained for Matryoshka truncation down to 32: recognized by its repo's name
    assert (pooling.mode, pooling.normalize, pooling.matryoshka_dimensions) == ("last", True, list(range(32, 49)))
    with LLM("qwen3-embedding:0.6b", block_size=4, num_kv_blocks=32) as llm:
        assert len(llm.embed("hello")[0]) == 48
