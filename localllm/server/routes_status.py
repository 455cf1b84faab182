"""Daemon endpoints beside the OpenAI API: /health, /metrics, /api/status (read by `localllm ps` and the TUI)
and /api/unload."""
from __future__ import annotations

import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from localllm.gpu_stats import gpu_stats
from localllm.server.metrics import CONTENT_TYPE
from localllm.server.openai_schemas import UnloadRequest
from localllm.server.openapi import Health, Unloaded, errors
from localllm.server.protocol import speculation_summary

router = APIRouter()
VERSION = "0.1.0"


@router.get("/health", response_model=None, responses={200: {"model": Health}, **errors()})
async def health() -> dict:
    return {"status": "ok", "pid": os.getpid()}


@router.get("/metrics", response_class=PlainTextResponse, responses={
    200: {"description": "Prometheus metrics, in its text format.", "content": {"text/plain": {}}}, **errors(401)})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.daemon.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/api/status", response_model=None, responses={
    200: {"description": "Loaded models, KV blocks, queue, throughput and memory (read by `localllm ps`)."},
    **errors(401)})
async def status(request: Request) -> dict:
    daemon = request.app.state.daemon
    models = daemon.models.status()
    ready = [m for m in models if m["state"] == "ready"]
    blocks = {k: sum(m["kv_blocks"][k] for m in ready) for k in ("total", "used", "cached", "free")}
    blocks["block_size"] = daemon.settings.engine_config().block_size
    queries = sum(m["prefix_cache"]["queries"] for m in ready)
    hits = sum(m["prefix_cache"]["hits"] for m in ready)
    speculation = speculation_summary(*(sum(m["speculation"][k] for m in ready)
                                        for k in ("draft_tokens", "accepted_tokens", "verify_steps")))
    return {
        "version": VERSION, "pid": os.getpid(), "address": daemon.address,
        "started_at": daemon.started_at, "uptime_s": round(time.monotonic() - daemon.started_monotonic, 3),
        "keep_alive_s": daemon.settings.keep_alive_s, "max_queued": daemon.settings.max_queued,
        "models": models,
        "kv_blocks": blocks,
        "prefix_cache": {"queries": queries, "hits": hits, "hit_rate": hits / queries if queries else 0.0},
        "speculation": speculation,
        "running": sum(m["running"] for m in ready), "waiting": sum(m["waiting"] for m in ready),
        "tokens_per_s": round(daemon.metrics.recent_tokens_per_s(), 2),
        "host_memory": host_memory(),
        "gpus": gpu_stats(),
    }


@router.post("/api/unload", response_model=None, responses={200: {"model": Unloaded}, **errors(400, 401, 404, 413)})
async def unload(body: UnloadRequest, request: Request) -> dict:
    state = request.app.state.daemon.models.unload(body.model)
    return {"model": body.model, "state": state}


def host_memory() -> dict:
    total = available = None
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        total = int(fields["MemTotal"].split()[0]) * 1024
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    rss = None
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return {"total_bytes": total, "available_bytes": available, "daemon_rss_bytes": rss}
