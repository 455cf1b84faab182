"""The daemon's loaded models: which names may be loaded, loading on first use, keep-alive unloading, and
what each one is doing. A request's model name is only ever looked up, never used as a path: it must be an
alias, a name the model store knows, or a model the daemon was started with."""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from localllm.errors import LocalLLMError
from localllm.hub import store
from localllm.hub.embedded import EMBEDDED_ALIAS
from localllm.hub.reference import resolve_reference
from localllm.server.engine_client import EngineClient
from localllm.server.engine_spawn import EngineLoadError, SpawnedEngine, served_model
from localllm.server.errors import APIError, model_not_found
from localllm.server.protocol import speculation_status
from localllm.server.settings import ServerSettings

log = logging.getLogger("localllm.server")
REAP_EVERY_S = 0.25
_MAX_NAME = 512


@dataclass
class LoadedModel:
    name: str
    spec: str
    client: EngineClient
    keep_alive_s: float
    ready: asyncio.Future
    loading_since: float = field(default_factory=time.time)
    loaded_at: float | None = None
    active: int = 0                    # requests holding it
    expires_at: float | None = None    # monotonic deadline while idle; None = in use, loading or kept forever

    @property
    def state(self) -> str:
        return "ready" if self.loaded_at is not None else "loading"


class ModelManager:
    def __init__(self, settings: ServerSettings, metrics=None, spawned: dict[str, SpawnedEngine] | None = None):
        """spawned: engine processes already started for preloaded models (engine_spawn.spawn_preloaded), by name."""
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self._spawned = dict(spawned or {})
        self._allowed: dict[str, tuple[str, str]] = {}   # name as a request may give it -> (name, engine spec)
        for given in settings.models:
            self._allowed[given] = served_model(given)
            if self._allowed[given][0] != EMBEDDED_ALIAS:
                self._allowed.setdefault(str(Path(given).expanduser().resolve()), self._allowed[given])
        self._reaper: asyncio.Task | None = None
        self._stopping: set[asyncio.Task] = set()

    # --- names -----------------------------------------------------------------------------------------
    def lookup(self, name) -> tuple[str, str] | None:
        """(model name, engine spec) for a name a request may load, else None."""
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME or "\0" in name:
            return None
        key = name.strip()
        if key in self._allowed:
            return self._allowed[key]
        if "/" in key or key.startswith("~"):   # a path to a model the daemon was started with
            try:
                found = self._allowed.get(str(Path(key).expanduser().resolve()))
            except (OSError, RuntimeError, ValueError):
                found = None
            if found is not None:
                return found
        return _known(key)

    def available(self) -> list[str]:
        names = [EMBEDDED_ALIAS] + [canonical for canonical, _ in self._allowed.values()]
        names += [e.name for e in _store_entries()]
        names += list(self.models)
        return list(dict.fromkeys(names))

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())
        for given in self.settings.models:
            canonical, spec = self._allowed[given]
            if canonical not in self.models:
                self._load(canonical, spec)

    async def acquire(self, name) -> LoadedModel:
        """The ready model a request names, loading it first if needed. Hold it until release()."""
        found = self.lookup(name)
        if found is None:
            raise model_not_found(str(name))
        canonical, spec = found
        model = self.models.get(canonical) or self._load(canonical, spec)
        model.active += 1
        model.expires_at = None
        try:
            await asyncio.shield(model.ready)
        except EngineLoadError as e:
            model.active -= 1
            if e.error_type == "ModelNotFoundError":
                raise APIError(404, f"The model '{name}' could not be loaded: {e}", param="model",
                               code="model_not_found") from None
            raise APIError(500, f"The model '{name}' failed to load: {e}", code="model_load_failed") from None
        except BaseException:
            self.release(model)
            raise
        return model

    def release(self, model: LoadedModel, keep_alive_s: float | None = None) -> None:
        model.active -= 1
        if keep_alive_s is not None:
            model.keep_alive_s = keep_alive_s
        if model.active == 0 and model.state == "ready":
            self._arm(model)

    def unload(self, name) -> str:
        """Unloads now if idle, else as soon as its last request ends. Returns the model's state."""
        found = self.lookup(name)
        model = self.models.get(found[0]) if found else None
        if model is None:
            raise APIError(404, f"The model '{name}' is not loaded.", param="model", code="model_not_loaded")
        model.keep_alive_s = 0
        if model.active == 0 and model.state == "ready":
            self._unload(model)
            return "unloaded"
        return "unloading"

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for model in list(self.models.values()):
            self._unload(model)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def _load(self, name: str, spec: str) -> LoadedModel:
        loop = asyncio.get_running_loop()
        client = EngineClient(name, self.settings.engine_config(spec), self.metrics, on_exit=self._engine_exited)
        model = LoadedModel(name, spec, client, self.settings.keep_alive_s, loop.create_future())
        model.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "unretrieved"
        self.models[name] = model
        loop.create_task(self._start(model, self._spawned.pop(name, None)))
        log.info("loading model %s", name)
        return model

    async def _start(self, model: LoadedModel, spawned: SpawnedEngine | None) -> None:
        try:
            await model.client.start(spawned)
        except EngineLoadError as e:
            log.warning("model %s failed to load: %s", model.name, e)
            if self.models.get(model.name) is model:
                del self.models[model.name]
            await model.client.stop()
            model.ready.set_exception(e)
            return
        model.loaded_at = time.time()
        log.info("model %s ready", model.name)
        if model.active == 0:
            self._arm(model)
        model.ready.set_result(None)

    def _arm(self, model: LoadedModel) -> None:
        keep = model.keep_alive_s
        model.expires_at = None if keep < 0 else time.monotonic() + keep
        if keep == 0:
            self._unload(model)

    def _unload(self, model: LoadedModel) -> None:
        if self.models.get(model.name) is model:
            del self.models[model.name]
            log.info("unloading model %s", model.name)
        task = asyncio.get_running_loop().create_task(model.client.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _engine_exited(self, client: EngineClient) -> None:
        model = self.models.get(client.name)
        if model is not None and model.client is client and model.state == "ready":
            log.warning("the engine of model %s exited: %s", client.name, client.failure or "killed")
            del self.models[client.name]

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            now = time.monotonic()
            for model in list(self.models.values()):
                if model.active == 0 and model.expires_at is not None and model.expires_at <= now:
                    self._unload(model)

    # --- status ----------------------------------------------------------------------------------------
    def engine_stats(self):
        """(name, state, latest counters, Loaded) of each model; the last two None while it loads."""
        return [(m.name, m.state, m.client.stats if m.state == "ready" else None,
                 m.client.info if m.state == "ready" else None) for m in self.models.values()]

    def status(self) -> list[dict]:
        return [_model_status(m) for m in self.models.values()]


def keep_alive_status(keep_alive_s: float, expires_at: float | None) -> dict:
    """The keep-alive fields of a model's status, plain JSON whatever was stored (a value that cannot be
    shown is null)."""
    until = None
    if expires_at is not None and math.isfinite(expires_at):
        until = _iso(time.time() + expires_at - time.monotonic())
    return {"keep_alive_s": keep_alive_s if math.isfinite(keep_alive_s) else None, "keep_alive_until": until,
            "keep_alive_forever": keep_alive_s < 0}


def _model_status(model: LoadedModel) -> dict:
    client, info, stats = model.client, model.client.info, model.client.stats
    out = {
        "name": model.name, "state": model.state, "pid": client.pid,
        "loading_since": _iso(model.loading_since), "loaded_at": _iso(model.loaded_at) if model.loaded_at else None,
        **keep_alive_status(model.keep_alive_s, model.expires_at), "requests": client.num_requests,
    }
    if info is not None:
        out.update({
            "device": info.device, "dtype": info.dtype, "quantization": info.quantization or None,
            "context_length": info.max_model_len,
            "threads": info.num_threads,
            "param_bytes": info.param_bytes, "kv_cache_bytes": info.kv_cache_bytes,
            "memory_bytes": _memory_bytes(info, [client.pid, *info.worker_pids]),
            "tensor_parallel_size": info.tensor_parallel_size, "worker_pids": list(info.worker_pids),
            "gpus": [{"device": g.device, "weight_bytes": g.weight_bytes, "kv_cache_bytes": g.kv_cache_bytes}
                     for g in info.gpus],
            "running": stats.running, "waiting": stats.waiting,
            "kv_blocks": {"total": stats.blocks_total, "used": stats.blocks_used, "cached": stats.blocks_cached,
                          "free": stats.blocks_free, "block_size": info.block_size},
            "prefix_cache": {"queries": stats.prefix_queries, "hits": stats.prefix_hits,
                             "hit_rate": stats.prefix_hits / stats.prefix_queries if stats.prefix_queries else 0.0},
            "preemptions": stats.preemptions, "steps": stats.steps,
            "speculative": info.speculative, "speculation": speculation_status(stats),
        })
    return out


def _iso(t: float) -> str | None:
    """UTC ISO 8601 with milliseconds; None past what datetime reads back (year 9999)."""
    try:
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return None


def _memory_bytes(info, pids: list[int | None]) -> int:
    """GPU: the weights and KV pool on all ranks; CPU: the resident memory of the engine and its workers."""
    on_host = [_rss(pid) for pid in pids] if not info.gpus else []
    if on_host and all(on_host):
        return sum(on_host)
    return info.param_bytes + info.kv_cache_bytes


def _rss(pid: int | None) -> int | None:
    """Resident memory of a process, on Linux; None elsewhere."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _known(name: str) -> tuple[str, str] | None:
    """(model name, engine spec) of the embedded model or a pulled one that `name` names (hub.reference, never
    read as a path), else None."""
    try:
        reference = resolve_reference(name, paths=False)
    except LocalLLMError:   # a bad name, or an unreadable store: the name is simply not known
        return None
    if reference.kind == "embedded":
        return EMBEDDED_ALIAS, EMBEDDED_ALIAS
    if reference.entry is None or not reference.entry.path:
        return None
    return reference.entry.name, reference.entry.path


def _store_entries() -> list:
    try:
        return [e for e in store.entries() if e.path]
    except Exception:  # noqa: BLE001 - an unreadable store lists nothing
        return []
