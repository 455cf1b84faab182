"""Schema fuzzing: schemathesis generates valid and invalid requests for every operation of the daemon's
served /openapi.json (but pulling, which reaches out to the Hub, and deleting, which empties the store). No
answer may be a 5xx and every error must have its route's shape (OpenAI's, or Ollama's on the Ollama API); how
far the answers conform to the schema (documented status codes, content types, bodies) is reported as a
figure."""
from __future__ import annotations

import collections
import contextlib
import zlib
from pathlib import Path

from reliability_checks.report import Section
from localllm.durations import parse_duration
from reliability_checks.responses import error_shape_problem, ndjson_error, stream_error
from reliability_checks.server import EMBEDDED, LocalServer

MAX_GENERATED_TOKENS = 8   # generated requests that reach the model are kept short
SKIPPED = {"/api/pull", "/api/delete"}


def fuzz(server: LocalServer, examples: int, schema_file: Path | None = None, command: str = "") -> Section:
    import schemathesis

    section = Section(f"bad input: schemathesis, {examples} cases per operation and mode", command)
    with server.http(timeout=30) as http:
        served = http.get("/openapi.json")
    section.figures["openapi_json_status"] = served.status_code
    if schema_file is None:
        if not section.check("the daemon serves /openapi.json", served.status_code == 200, served.text[:200]):
            return section
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    else:
        schema = schemathesis.openapi.from_path(schema_file)
        section.figures["schema"] = f"{schema_file} (not the served one)"
    server.load()
    results = _run(schema, server, examples)
    fivexx = [r for r in results if r[1] >= 500]
    wrong = [r for r in results if r[2]]
    conformance = collections.Counter(kind for r in results for kind in r[3])
    section.figures.update({"requests": len(results),
                            "answers_by_status": dict(sorted(collections.Counter(str(r[1]) for r in results).items())),
                            "5xx": len(fivexx), "wrong_error_shape": len(wrong),
                            "schema_conformance_failures": dict(conformance)})
    section.check("0 responses with status 5xx", not fivexx, _examples(fivexx))
    section.check("every error in its route's shape (OpenAI's, Ollama's on its API)", not wrong, _examples(wrong))
    section.check("the daemon is alive after fuzzing", server.alive())
    return section


def _run(schema, server: LocalServer, examples: int) -> list[tuple]:
    """(request, status, shape problem, schema conformance failures) for every generated case."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    results = []
    for operation in schema.get_all_operations():
        operation = operation.ok()
        if operation.path in SKIPPED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=examples, database=None, deadline=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(operation.as_strategy(generation_mode=mode))
            def send(case):
                _aim_at_the_model(case)
                results.append(_send(server, case))

            with contextlib.suppress(Unsatisfiable):   # e.g. no invalid request exists for GET /health
                send()
    return results


def _aim_at_the_model(case) -> None:
    """Half of the generated bodies name the served model (so that they reach sampling and the engine
    rather than stopping at 404), and none asks for many tokens."""
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str) and zlib.crc32(body["model"].encode("utf-8", "replace")) % 2 == 0:
        body["model"] = EMBEDDED
    limits = ("max_tokens", "max_completion_tokens", "max_output_tokens")
    for field in (*limits, "min_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_GENERATED_TOKENS:
            body[field] = MAX_GENERATED_TOKENS
    if body.get("model") == EMBEDDED and not any(field in body for field in limits):
        body["max_output_tokens" if case.path == "/v1/responses" else "max_tokens"] = MAX_GENERATED_TOKENS
    options = body.get("options")   # the Ollama API's, whose generations ignore max_tokens
    if options is None and body.get("model") == EMBEDDED and case.path in ("/api/generate", "/api/chat"):
        options = body["options"] = {}   # else one runs to the end of the context (the schema's own example)
    if isinstance(options, dict) and not (isinstance(options.get("num_predict"), int)
                                          and 0 < options["num_predict"] <= MAX_GENERATED_TOKENS):
        options["num_predict"] = MAX_GENERATED_TOKENS
    keep_alive = body.get("keep_alive")
    if isinstance(keep_alive, str):   # the Ollama API's durations ("5m")
        with contextlib.suppress(ValueError):
            keep_alive = parse_duration(keep_alive)
    if type(keep_alive) in (int, float) and keep_alive >= 0:
        body["keep_alive"] = -1   # valid either way; unloading after a case would reload the model for the next


def _send(server: LocalServer, case) -> tuple:
    from schemathesis.core.failures import Failure, FailureGroup
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    response = case.call(base_url=server.url, headers=server.headers(), timeout=120)
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    problem = None
    if response.status_code >= 400:
        problem = error_shape_problem(response.status_code, response.content, case.path)
    elif content_type.startswith("text/event-stream"):
        code = stream_error(response.content)
        problem = f"stream ended with error {code}" if code else None
    elif content_type.startswith("application/x-ndjson"):
        message = ndjson_error(response.content)
        problem = f"stream ended with error {message}" if message else None
    failed = []
    for check in (status_code_conformance, content_type_conformance, response_schema_conformance):
        try:
            case.validate_response(response, checks=[check])
        except (Failure, FailureGroup):
            failed.append(check.__name__)
    return f"{case.method} {case.formatted_path} {str(case.body)[:120]}", response.status_code, problem, failed


def _examples(results: list[tuple], limit: int = 5) -> str:
    return "; ".join(f"{r[0]} -> {r[1]} {r[2] or ''}" for r in results[:limit]) + (
        f"; and {len(results) - limit} more" if len(results) > limit else "")
