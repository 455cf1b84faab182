"""create_app(settings): the daemon's FastAPI application, wired but not yet listening."""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from localllm.server import routes_ollama, routes_openai, routes_responses, routes_status
from localllm.server.body_limit import BodyLimitMiddleware
from localllm.server.errors import install_handlers
from localllm.server.json_body import JSONBodyMiddleware
from localllm.server.metrics import Metrics, RequestCounter
from localllm.server.models import ModelManager
from localllm.server.openapi import openapi_schema
from localllm.server.pulls import Pulls
from localllm.server.responses import ResponseStore
from localllm.server.security import SecurityMiddleware
from localllm.server.settings import ServerSettings


@dataclass
class Daemon:
    """What the routes share, reached as request.app.state.daemon."""
    settings: ServerSettings
    models: ModelManager
    metrics: Metrics
    address: str | None = None
    responses: ResponseStore = field(default_factory=ResponseStore)   # kept for previous_response_id
    pulls: Pulls = field(default_factory=Pulls)
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    started_monotonic: float = field(default_factory=time.monotonic)


def create_app(settings: ServerSettings, address: str | None = None, spawned: dict | None = None) -> FastAPI:
    """spawned: engine processes already started for the preloaded models (engine_spawn.spawn_preloaded)."""
    metrics = Metrics()
    models = ModelManager(settings, metrics, spawned)
    metrics.watch_models(models)
    daemon = Daemon(settings, models, metrics, address)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        models.start()
        try:
            yield
        finally:
            await models.shutdown()

    app = FastAPI(title="localllm", version=routes_status.VERSION, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    app.openapi = lambda: openapi_schema(app)
    app.state.daemon = daemon
    install_handlers(app)
    app.include_router(routes_openai.router)
    app.include_router(routes_responses.router)
    app.include_router(routes_status.router)
    app.include_router(routes_ollama.router)
    app.add_middleware(JSONBodyMiddleware)   # innermost: bodies are JSON whatever their label
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityMiddleware, settings=settings)   # before the body is read
    app.add_middleware(RequestCounter, metrics=metrics)   # outermost: refusals are counted too
    return app
