"""A daemon starts the engines of the models it preloads before it imports its web stack, and its model manager
then follows those processes rather than starting others; `run` has the daemon it starts preload the model it is
about to use, when that model's files are here."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from localllm.cli.run import model_to_serve
from localllm.config import Config
from localllm.hub.embedded import EMBEDDED_ALIAS
from localllm.hub.reference import ModelReference
from localllm.sampling_params import SamplingParams
from localllm.server.engine_spawn import served_model, spawn_preloaded
from localllm.server.models import ModelManager
from localllm.server.protocol import ModelResolved
from localllm.server.settings import ServerSettings
from tiny_models import build_model_dir

ENGINE = {"block_size": 4, "num_kv_blocks": 16, "num_threads": 1}   # Config fields


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_model_dir("qwen2", tmp_path_factory.mktemp("qwen2")))


def test_the_daemon_can_start_engines_before_importing_its_web_stack():
    code = ("import json, sys\nimport localllm.server.daemon, localllm.server.engine_spawn\n"
            "print(json.dumps([m for m in ('fastapi', 'uvicorn', 'torch', 'transformers') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_a_preloaded_engine_loads_on_its_own_and_the_manager_follows_it(model_dir):
    settings = ServerSettings(port=0, models=[model_dir], engine=ENGINE)
    spawned = spawn_preloaded(settings.models, settings.engine_config)
    assert list(spawned) == [model_dir]
    engine = spawned[model_dir]
    # loading before anything of the front end follows it: it names its files first
    assert engine.from_engine.poll(300) and engine.from_engine.receive() == ModelResolved(model_dir)

    async def serve_once():
        manager = ModelManager(settings, spawned=spawned)
        manager.start()
        model = await manager.acquire(model_dir)
        try:
            assert model.client.pid == engine.process.pid   # no second engine was started
            prompt = model.client.tokenizer.encode("The quick brown fox", add_special_tokens=False)
            queue = asyncio.Queue()
            model.client.submit(prompt, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), queue)
            tokens = []
            while len(tokens) < 3:
                _, delta = await asyncio.wait_for(queue.get(), 300)
                tokens += delta.token_ids
            return tokens
        finally:
            manager.release(model)
            await manager.shutdown()

    assert len(asyncio.run(serve_once())) == 3
    engine.process.join(30)
    assert engine.process.exitcode == 0


def test_an_engine_that_cannot_be_started_is_left_to_the_first_load():
    assert spawn_preloaded(["/models/\udcff"], lambda spec: Config(model=spec, **ENGINE)) == {}


def test_the_embedded_models_aliases_are_served_under_one_name():
    assert served_model("SmolLM2:135M") == served_model(EMBEDDED_ALIAS) == (EMBEDDED_ALIAS, EMBEDDED_ALIAS)
    assert served_model("/models/x") == ("/models/x", "/models/x")


def test_run_preloads_the_model_it_uses_when_its_files_are_here(tmp_path):
    gguf = tmp_path / "m.gguf"
    assert model_to_serve(ModelReference(EMBEDDED_ALIAS, "embedded", path=gguf)) == (EMBEDDED_ALIAS, [EMBEDDED_ALIAS])
    assert model_to_serve(ModelReference(str(gguf), "local", path=gguf)) == (str(gguf), [str(gguf)])
    # not here yet: the daemon pulls it first, then loads it on the request
    assert model_to_serve(ModelReference(EMBEDDED_ALIAS, "embedded")) == (EMBEDDED_ALIAS, [])
    assert model_to_serve(ModelReference("org/model", "hub", repo="org/model")) == ("org/model", [])
