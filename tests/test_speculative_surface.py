"""Speculative decoding from the outside: a daemon started with --speculative ngram answers the greedy tokens of
an engine without it, over real HTTP, and reports its acceptance in /api/status, /metrics and `localllm ps`; the
bench reports acceptance and tokens/s for the code-edit workload; the same with a draft model; bad settings are
one-line errors."""
from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from daemon_helpers import TINY_ENGINE, running_daemon
from localllm import LLM, SamplingParams
from localllm.cli import ps
from localllm.cli.main import app

runner = CliRunner()
PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


def metric(text: str, name: str, model: str) -> float:
    return next(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == name and sample.labels.get("model") == model)


def test_a_speculating_daemon_answers_the_same_greedy_tokens_and_reports_acceptance(tiny, tmp_path):
    expected = LLM(tiny, block_size=4, num_kv_blocks=128, num_threads=1).generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0].outputs[0]
    with running_daemon(tmp_path, models=[tiny], engine=TINY_ENGINE,
                        args=["--speculative", "ngram", "--num-speculative-tokens", "3"]) as daemon:
        with daemon.http() as http:
            r = http.post("/v1/completions", json={"model": tiny, "prompt": PROMPT, "max_tokens": 40,
                                                   "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == expected.text
            metrics = http.get("/metrics").text
        status = daemon.wait_until(lambda s: s["speculation"]["draft_tokens"] > 0, 10, "the engine's counters")
        model = daemon.model_status(tiny)
        spec = status["speculation"]
        assert model["speculative"] == "ngram" and model["speculation"] == spec
        assert 0 <= spec["accepted_tokens"] <= spec["draft_tokens"]
        assert spec["acceptance_rate"] == pytest.approx(spec["accepted_tokens"] / spec["draft_tokens"])
        assert spec["mean_accepted_length"] == pytest.approx(1 + spec["accepted_tokens"] / spec["verify_steps"])
        # the scrape may predate the status's last engine report: counters only grow
        assert metric(metrics, "localllm_spec_draft_tokens_total", tiny) <= spec["draft_tokens"]
        assert 0 <= metric(metrics, "localllm_spec_acceptance_rate", tiny) <= 1
        assert (f"speculation:   {spec['acceptance_rate']:.1%} of {spec['draft_tokens']} draft tokens accepted, "
                f"{spec['mean_accepted_length']:.2f} tokens per verifying step ({tiny})") in ps.render(status)


def test_bench_latency_reports_acceptance_on_the_code_edit_workload(tiny, tmp_path):
    out = tmp_path / "result.json"
    result = runner.invoke(app, ["bench", "latency", "--model", tiny, "--max-model-len", "512", "--new-tokens", "24",
                                 "--ttft-prompt-tokens", "16", "--workload", "code-edit", "--speculative", "ngram",
                                 "--spec-accept-prob", "1", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["workload"] == "code-edit" and r["decode_prompt_tokens"] == 512 - 24 and r["decode_tokens_per_s"] > 0
    spec = r["speculation"]
    assert spec["speculative"] == "ngram" and spec["forced_acceptance"] == 1.0
    assert spec["acceptance_rate"] == 1.0 and spec["draft_tokens"] > 0
    # every draft accepted, 4 at a time, within 23 tokens after the first
    assert spec["mean_accepted_length"] > 3


def test_a_daemon_with_a_draft_model_answers_the_same_greedy_tokens(tiny, tmp_path):
    """The target as its own draft model: every draft kept, `speculative` reads draft:MODEL in /api/status; a draft
    model that is not there fails the load with a 404 naming it."""
    expected = LLM(tiny, block_size=4, num_kv_blocks=128, num_threads=1).generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0].outputs[0]
    with running_daemon(tmp_path / "with", models=[tiny], engine=TINY_ENGINE,
                        args=["--speculative", f"draft:{tiny}"]) as daemon:
        with daemon.http() as http:
            r = http.post("/v1/completions", json={"model": tiny, "prompt": PROMPT, "max_tokens": 40,
                                                   "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == expected.text
        status = daemon.wait_until(lambda s: s["speculation"]["draft_tokens"] > 0, 10, "the engine's counters")
        assert daemon.model_status(tiny)["speculative"] == f"draft:{tiny}"
        assert status["speculation"]["acceptance_rate"] == 1.0
    missing = tmp_path / "no-such-draft"
    with running_daemon(tmp_path / "missing", models=[tiny], engine=TINY_ENGINE, wait_ready=False,
                        args=["--speculative", f"draft:{missing}"]) as daemon:
        with daemon.http() as http:
            r = http.post("/v1/completions", json={"model": tiny, "prompt": "hi", "max_tokens": 2})
            assert r.status_code == 404
            assert "draft model: " in r.json()["error"]["message"] and str(missing) in r.json()["error"]["message"]


@pytest.mark.parametrize("args, message", [
    (["serve", "--speculative", "medusa"], "Error: speculative must be one of off, ngram or draft:MODEL, got 'medusa'"),
    (["run", "--speculative", "draft:", "hi"], "Error: speculative=draft:MODEL needs a model after 'draft:'"),
    (["run", "--tp", "2", "--speculative", "draft:tiny", "hi"],
     "Error: speculative decoding with a draft model needs tensor_parallel_size 1, got 2"),
    (["serve", "--tp", "2", "--speculative", "draft:tiny"],
     "Error: speculative decoding with a draft model needs tensor_parallel_size 1, got 2"),
    (["bench", "latency", "--backend", "hf", "--speculative", "ngram"],
     "Error: --speculative applies to --backend localllm only"),
    (["bench", "latency", "--spec-accept-prob", "0.5"], "Error: speculative_accept_prob needs speculative decoding on"),
])
def test_bad_settings_are_one_error_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.output.strip().startswith(message)
