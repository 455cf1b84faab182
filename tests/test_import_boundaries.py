"""The daemon's front end, the CLI and the TUI never load torch (about 1.6 s and 200 MiB) nor transformers: each
module is imported in a fresh interpreter, which then reports what it loaded."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from localllm.loader.resolve import resolve_model

HEAVY = ("torch", "transformers")
TORCH_FREE = ["localllm.server.app", "localllm.client", "localllm.cli.main", "localllm.tui.app",
              "localllm.engine.scheduler", "localllm.engine.block_manager", "localllm.hub.pull",
              "localllm.server.protocol", "localllm.guidance"]


def loaded_after(code: str) -> list[str]:
    """Which of HEAVY a fresh interpreter has loaded after running `code`."""
    report = f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", report], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", TORCH_FREE)
def test_importing_loads_neither_torch_nor_transformers(module):
    assert loaded_after(f"import {module}") == []


def test_what_a_cold_run_imports_before_the_daemon_and_its_engine_start_leaves_out_its_later_needs():
    """`localllm run` starts the daemon before it talks to it (httpx), the daemon starts its preloaded engines before
    its event loop (asyncio), and neither prints a rich table: each is imported where it is used."""
    code = ("import json, sys\nimport localllm.cli.main, localllm.client, localllm.server.daemon\n"
            "print(json.dumps([m for m in ('httpx', 'rich', 'asyncio') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_the_front_end_tokenizes_and_renders_chats_without_them():
    model_dir = resolve_model("smollm2:135m")   # converting the GGUF is the engine's work, done here beforehand
    code = ("from localllm.loader.tokenizer import Tokenizer\n"
            f"tok = Tokenizer.from_dir({str(model_dir)!r})\n"
            "text = tok.apply_chat_template([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True)\n"
            "assert tok.decode(tok.encode(text, add_special_tokens=False)) == text\n")
    assert loaded_after(code) == []


def test_the_check_itself_sees_torch():
    assert loaded_after("import localllm.engine.core") == ["torch"]


def test_the_chat_app_reaches_models_only_through_the_daemon():
    """It pulls, lists and chats through localllm.client: neither the model store, the pull code, the loader nor
    the engine is imported (and nothing of them is called in its threads, since nothing of them is loaded)."""
    code = ("import json, sys\nimport localllm.tui.app, localllm.tui.screens.pull, localllm.tui.screens.models\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('localllm.hub.store', "
            "'localllm.hub.pull', 'localllm.hub.reference', 'localllm.loader', 'localllm.engine')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []
