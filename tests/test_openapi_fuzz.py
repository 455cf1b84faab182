"""The daemon's /openapi.json as a schema-driven client sees it: schemathesis sends a few hundred generated
requests, valid and invalid, to a real daemon on the embedded model, and every answer must be no 5xx and
conform to the schema (status, content type, body)."""
from __future__ import annotations

import contextlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from daemon_helpers import running_daemon
from localllm.durations import parse_duration
from localllm.hub.embedded import EMBEDDED_ALIAS
from localllm.server.settings import MAX_KEEP_ALIVE_S

# a short context keeps every generation short, whatever max_tokens and n the fuzzer picks
ENGINE = ["max_model_len=48", "num_kv_blocks=32", "block_size=16", "max_num_seqs=2", "num_threads=1"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("fuzzed"), models=[EMBEDDED_ALIAS], engine=ENGINE,
                        args=["--max-queued", "2"], wait_ready=False) as d:
        # the first load converts the GGUF (once per LOCALLLM_HOME), slow on a busy machine
        d.wait_until(lambda s: [m["state"] for m in s["models"]] == ["ready"], 600, "the embedded model")
        yield d


@pytest.fixture
def api_schema(daemon):
    loaded = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json")
    # the coverage phase walks every field's boundaries whatever max_examples says: hundreds of generations per
    # route, too slow for CI on a CPU (the reliability script runs it)
    loaded.config.phases.coverage.enabled = False
    # pulling reaches out to the Hub and deleting empties the store: their own tests cover them (test_ollama_pull)
    return loaded.exclude(path_regex=r"^/api/(pull|delete)$")


schema = schemathesis.pytest.from_fixture("api_schema")


def test_the_schema_is_served_without_422_and_with_the_real_statuses(daemon):
    with daemon.http() as http:
        served = http.get("/openapi.json").json()
    assert '"422"' not in str(served) and "HTTPValidationError" not in str(served)
    chat = served["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert sorted(chat) == ["200", "400", "401", "403", "404", "413", "500", "503"]
    assert chat["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(served["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


# 25 cases per operation (valid and invalid ones, the same each run): some 500 requests in all, each field's type
# and bounds reached; more mostly repeat what these find, at a few tenths of a second per generation on a CPU
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_conforms_to_its_schema_and_never_answers_5xx(case):
    keep_alive = case.body.get("keep_alive") if isinstance(case.body, dict) else None
    if isinstance(keep_alive, str):   # the Ollama API's durations ("5m")
        with contextlib.suppress(ValueError):
            keep_alive = parse_duration(keep_alive)
    if type(keep_alive) in (int, float) and 0 <= keep_alive <= MAX_KEEP_ALIVE_S:
        case.body["keep_alive"] = -1   # valid either way; unloading after each case would reload the model each time
    # not positive_data_acceptance: a schema cannot say that a prompt must fit the context or that best_of
    # must equal n, so some schema-valid requests are rightly refused with 400
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])
