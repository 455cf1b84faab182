"""Starting an engine process, apart from following it (engine_client): the daemon starts the engines of the models
it preloads first thing, so that their imports (torch) and loads run while the front end imports its web stack.
Light on purpose: neither FastAPI nor the tokenizer is imported here."""
from __future__ import annotations

import multiprocessing
import threading
from dataclasses import dataclass, replace

from localllm import settings
from localllm.config import Config
from localllm.hub.embedded import EMBEDDED_ALIAS, EMBEDDED_ALIASES
from localllm.server import engine_process
from localllm.server.protocol import PROTOCOL_VERSION, FromEngine, Receiver, Sender, Start

# Starting an engine process lends it the daemon's environment for a moment (see _start_with_environment).
_SPAWN_LOCK = threading.Lock()


class EngineLoadError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


@dataclass
class SpawnedEngine:
    """An engine process, already sent its Start message, and our ends of its two pipes."""
    process: multiprocessing.process.BaseProcess
    to_engine: Sender
    from_engine: Receiver


def served_model(given: str) -> tuple[str, str]:
    """(model name, engine spec) of a model the daemon was started with (--model): any of the embedded model's
    aliases is served as EMBEDDED_ALIAS."""
    if given.lower() in EMBEDDED_ALIASES:
        return EMBEDDED_ALIAS, EMBEDDED_ALIAS
    return given, given


def spawn_engine(name: str, config: Config) -> SpawnedEngine:
    """Starts the engine process of model `name`; it starts loading at once (raises EngineLoadError for a model name
    the pipe cannot carry)."""
    ctx = multiprocessing.get_context("spawn")
    engine_in, to_engine = ctx.Pipe(duplex=False)
    from_engine, engine_out = ctx.Pipe(duplex=False)
    num_threads = config.num_threads or engine_process.default_num_threads()
    sender = Sender(to_engine)
    try:
        start = sender.encode(Start(PROTOCOL_VERSION, replace(config, num_threads=num_threads)))
    except UnicodeEncodeError as e:   # a model path that is no valid Unicode
        for end in (engine_in, to_engine, from_engine, engine_out):
            end.close()
        raise EngineLoadError("ModelNotFoundError", f"the model name is not valid Unicode ({e.reason})") from None
    sender.send_bytes(start)   # waits in the pipe until the process reads it
    process = ctx.Process(target=engine_process.main, args=(engine_in, engine_out), name=f"localllm-engine[{name}]",
                          daemon=True)
    _start_with_environment(process, engine_process.openmp_environment(num_threads))
    engine_in.close()   # keep only our ends, so that its death reads as end-of-file
    engine_out.close()
    return SpawnedEngine(process, sender, Receiver(from_engine, FromEngine))


def spawn_preloaded(models: list[str], engine_config) -> dict[str, SpawnedEngine]:
    """The engine processes of the models the daemon preloads (its --model list), by model name, started now.
    engine_config(spec) -> Config. A model whose process cannot start is left out: loading it again later reports
    why."""
    engines: dict[str, SpawnedEngine] = {}
    for given in models:
        name, spec = served_model(given)
        if name not in engines:
            try:
                engines[name] = spawn_engine(name, engine_config(spec))
            except EngineLoadError:
                continue
    return engines


def _start_with_environment(process, environment: dict[str, str]) -> None:
    """Starts the process with these variables in its environment from its first instruction: whatever it imports
    before reading them, OpenMP is configured as asked."""
    with _SPAWN_LOCK, settings.lent_environment(environment):
        process.start()
