"""A daemon serving a model over 2 tensor-parallel ranks (gloo, CPU): answers equal the one-rank offline engine's
under chunked prefill, preemption and prefix-cache hits; a killed worker takes its engine down cleanly (the
request in flight gets 503, the next one loads the model again); stopping the daemon leaves no process behind."""
from __future__ import annotations

import os
import random
import signal
import threading

from daemon_helpers import running_daemon, wait_gone
from localllm import LLM, SamplingParams
from tiny_models import TP_CONFIGS, build_model_dir

# a pool small enough for preemption, a budget small enough for chunked prefill, and room for a 150-token answer
ENGINE = dict(block_size=4, num_kv_blocks=40, max_num_batched_tokens=8, num_threads=1)


def test_daemon_over_two_ranks(tmp_path):
    model = str(build_model_dir("qwen2", tmp_path / "qwen2", configs=TP_CONFIGS))   # 1 KV head on 2 ranks
    rng = random.Random(3)
    prompts = [[rng.randrange(300) for _ in range(12)] for _ in range(5)]
    greedy = SamplingParams(temperature=0, max_tokens=28, ignore_eos=True)
    expected = [o.outputs[0].text for o in LLM(model, **ENGINE).generate(prompts, greedy)]
    engine = [f"{k}={v}" for k, v in ENGINE.items()]
    with running_daemon(tmp_path / "daemon", models=[model], engine=engine, args=["--tp", "2"]) as daemon:
        oai = daemon.openai()
        status = daemon.model_status(model)
        assert status["tensor_parallel_size"] == 2 and len(status["worker_pids"]) == 1
        assert status["gpus"] == []   # per-GPU memory only on GPUs
        assert "ready in" in daemon.log() and "split over 2 CPU ranks" in daemon.log()
        for _ in range(2):   # the second time, the prompts' blocks come from the prefix cache
            r = oai.completions.create(model=model, prompt=prompts, max_tokens=28, temperature=0,
                                       extra_body={"ignore_eos": True})
            assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == expected
        status = daemon.model_status(model)
        assert status["preemptions"] > 0 and status["prefix_cache"]["hits"] > 0
        engine_pid, worker_pid = status["pid"], status["worker_pids"][0]

        # a worker dies while a request runs: that request fails with 503, the engine and its workers are gone
        answer = {}
        with daemon.http() as http:
            body = {"model": model, "prompt": prompts[0][:5], "max_tokens": 150, "temperature": 0, "ignore_eos": True}
            waiter = threading.Thread(target=lambda: answer.update(r=http.post("/v1/completions", json=body)))
            waiter.start()
            daemon.wait_until(lambda s: s["running"] > 0, 30, "the long request to run")
            os.kill(worker_pid, signal.SIGKILL)
            waiter.join(60)
        assert answer["r"].status_code == 503, answer["r"].text
        assert answer["r"].json()["error"]["code"] == "engine_unavailable"
        assert wait_gone(engine_pid) and wait_gone(worker_pid)

        # the next request loads the model again, on new processes
        r = oai.completions.create(model=model, prompt=prompts[:1], max_tokens=28, temperature=0,
                                   extra_body={"ignore_eos": True})
        assert r.choices[0].text == expected[0]
        status = daemon.model_status(model)
        pids = [status["pid"], *status["worker_pids"]]
        assert status["tensor_parallel_size"] == 2 and engine_pid not in pids and worker_pid not in pids

        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(60)
        assert all(wait_gone(pid) for pid in pids), "an engine or worker process outlived the daemon"
