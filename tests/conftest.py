import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def localllm_home(tmp_path_factory):
    """One cache dir for the whole session: the embedded GGUF is converted once, not per test."""
    home = tmp_path_factory.mktemp("localllm_home")
    previous = os.environ.get("LOCALLLM_HOME")
    os.environ["LOCALLLM_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("LOCALLLM_HOME", None)
    else:
        os.environ["LOCALLLM_HOME"] = previous
