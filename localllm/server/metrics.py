"""Prometheus metrics on the daemon's own registry: counters and histograms fed by the front end, gauges
read at scrape time from the loaded models' latest engine counters."""
from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from localllm.gpu_stats import gpu_stats
from localllm.server.errors import OLLAMA_PATHS
from localllm.server.protocol import speculation_status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                    20.0, 40.0, 80.0)
RATE_WINDOW_S = 10.0


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("localllm_requests", "HTTP API requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("localllm_prompt_tokens", "Prompt tokens of admitted requests", ["model"],
                                     registry=self.registry)
        self.generation_tokens = Counter("localllm_generation_tokens", "Tokens generated", ["model"],
                                         registry=self.registry)
        self.ttft = Histogram("localllm_time_to_first_token_seconds", "Time from admission to the first token",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("localllm_inter_token_latency_seconds", "Time between two tokens of one completion",
                             ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._recent: deque[tuple[float, int]] = deque()

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def inter_token(self, model: str, seconds: float) -> None:
        self.itl.labels(model).observe(seconds)

    def generated(self, model: str, count: int) -> None:
        self.generation_tokens.labels(model).inc(count)
        self._recent.append((time.monotonic(), count))

    def recent_tokens_per_s(self) -> float:
        """Tokens generated over the last RATE_WINDOW_S seconds, per second."""
        cutoff = time.monotonic() - RATE_WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(count for _, count in self._recent) / RATE_WINDOW_S

    def watch_models(self, models) -> None:
        """Adds the engine gauges, read from `models` (a ModelManager) at each scrape."""
        self.registry.register(_EngineCollector(models))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    def __init__(self, models):
        self.models = models

    def describe(self):
        return []

    def collect(self):
        running = GaugeMetricFamily("localllm_requests_running", "Sequences the engine is running", labels=["model"])
        waiting = GaugeMetricFamily("localllm_requests_waiting", "Sequences waiting in the engine", labels=["model"])
        blocks = GaugeMetricFamily("localllm_kv_blocks", "KV-cache blocks by state (used, cached, free)",
                                   labels=["model", "state"])
        hit_rate = GaugeMetricFamily("localllm_prefix_cache_hit_rate", "Share of prompt tokens found in the "
                                     "prefix cache since the model was loaded", labels=["model"])
        queries = CounterMetricFamily("localllm_prefix_cache_queries", "Prompt tokens looked up in the prefix "
                                      "cache", labels=["model"])
        hits = CounterMetricFamily("localllm_prefix_cache_hits", "Prompt tokens found in the prefix cache",
                                   labels=["model"])
        drafts = CounterMetricFamily("localllm_spec_draft_tokens", "Speculative decoding: draft tokens verified",
                                     labels=["model"])
        accepted = CounterMetricFamily("localllm_spec_accepted_tokens", "Speculative decoding: draft tokens "
                                       "accepted", labels=["model"])
        acceptance = GaugeMetricFamily("localllm_spec_acceptance_rate", "Speculative decoding: share of draft "
                                       "tokens accepted since the model was loaded", labels=["model"])
        accepted_length = GaugeMetricFamily("localllm_spec_mean_accepted_length", "Speculative decoding: tokens a "
                                            "verifying sequence gets per step (accepted drafts + 1)", labels=["model"])
        loaded = GaugeMetricFamily("localllm_model_loaded", "1 when ready, 0 while loading", labels=["model"])
        degree = GaugeMetricFamily("localllm_tensor_parallel_size", "GPUs (or CPU ranks) the model is split over",
                                   labels=["model"])
        rank_memory = GaugeMetricFamily("localllm_gpu_model_bytes", "Memory of one GPU holding the model's weights "
                                        "or KV cache", labels=["model", "device", "kind"])
        for name, state, stats, info in self.models.engine_stats():
            loaded.add_metric([name], 1.0 if state == "ready" else 0.0)
            if stats is None:
                continue
            degree.add_metric([name], info.tensor_parallel_size)
            for gpu in info.gpus:
                rank_memory.add_metric([name, gpu.device, "weights"], gpu.weight_bytes)
                rank_memory.add_metric([name, gpu.device, "kv_cache"], gpu.kv_cache_bytes)
            running.add_metric([name], stats.running)
            waiting.add_metric([name], stats.waiting)
            for kind in ("used", "cached", "free"):
                blocks.add_metric([name, kind], getattr(stats, f"blocks_{kind}"))
            queries.add_metric([name], stats.prefix_queries)
            hits.add_metric([name], stats.prefix_hits)
            hit_rate.add_metric([name], stats.prefix_hits / stats.prefix_queries if stats.prefix_queries else 0.0)
            spec = speculation_status(stats)
            drafts.add_metric([name], spec["draft_tokens"])
            accepted.add_metric([name], spec["accepted_tokens"])
            acceptance.add_metric([name], spec["acceptance_rate"])
            accepted_length.add_metric([name], spec["mean_accepted_length"])
        yield from (running, waiting, blocks, hit_rate, queries, hits, drafts, accepted, acceptance, accepted_length,
                    loaded, degree, rank_memory)
        yield from _gpu_families()


def _gpu_families():
    """Each GPU's memory in use and utilization, as NVML reports them at scrape time (nothing without GPUs)."""
    used = GaugeMetricFamily("localllm_gpu_memory_used_bytes", "GPU memory in use (all processes)", labels=["gpu"])
    utilization = GaugeMetricFamily("localllm_gpu_utilization_percent", "GPU utilization", labels=["gpu"])
    for gpu in gpu_stats():
        used.add_metric([str(gpu["index"])], gpu["memory_used_bytes"])
        utilization.add_metric([str(gpu["index"])], gpu["utilization_percent"])
    yield from (used, utilization)


_ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/models", "/health",
              "/metrics", "/api/status", "/api/unload", *OLLAMA_PATHS}


class RequestCounter:
    """ASGI middleware counting every HTTP request by endpoint and status code, refusals included."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = ["500"]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            path = scope["path"]
            endpoint = path if path in _ENDPOINTS else ("/v1/models/{model}" if path.startswith("/v1/models/")
                                                        else "other")
            self.metrics.requests.labels(endpoint, status[0]).inc()
