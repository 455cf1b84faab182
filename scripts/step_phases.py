"""Where the host's time in EngineCore.step goes over a `localllm bench throughput` run: each phase of the step
(scheduling, packing, forward, sampling, reading back, bookkeeping, the grammar work of guided steps, and the wait
for the device's tokens) is timed where the engine calls it, and summed over the workload (not the warm-up).
A phase a step spends waiting for the device ("Event.synchronize") is the device's lead over the host; a step
with none is bound by the host.

    python scripts/step_phases.py bench throughput --random-weights qwen3-0.6b --workload nano-vllm [--json-schema]

Every argument is passed to `localllm`; the phase table is printed before the bench's own table.
"""
from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict

import torch

from localllm.bench import engine_backend
from localllm.engine import core, grammar, model_runner, sampler

TOTALS: defaultdict[str, float] = defaultdict(float)
CALLS: Counter[str] = Counter()


def timed(owner, name: str, static: bool = False) -> None:
    """Replaces owner.name with a wrapper adding each call's time to TOTALS."""
    function, key = getattr(owner, name), f"{owner.__name__}.{name}"

    def call(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TOTALS[key] += time.perf_counter() - began
            CALLS[key] += 1
    setattr(owner, name, staticmethod(call) if static else call)


def instrument() -> None:
    for name in ("step", "_pack", "_forward", "_sample", "_read_back", "_apply", "_sample_later"):
        timed(core.EngineCore, name)
    timed(core.Scheduler, "schedule")
    timed(model_runner.ModelRunner, "hidden_states")
    timed(model_runner.ModelRunner, "logits")
    timed(sampler.Sampler, "token_ids", static=True)
    for name in ("advance", "start_masks"):
        timed(grammar.GrammarMatchers, name)
    timed(grammar.PendingMasks, "result")
    timed(grammar.TokenMask, "apply_")
    timed(torch.cuda.Event, "synchronize")
    generate_all = engine_backend.EngineBackend.generate_all

    def report_phases(self, workload):
        TOTALS.clear()
        CALLS.clear()
        stats = generate_all(self, workload)
        steps = CALLS["EngineCore.step"]
        print(f"{workload.name}: {steps} steps in {stats.elapsed_s:.3f} s")
        print(f"{'phase':32s} {'total s':>8s} {'calls':>6s} {'ms/step':>8s}")
        for key in sorted(TOTALS, key=TOTALS.get, reverse=True):
            print(f"{key:32s} {TOTALS[key]:8.3f} {CALLS[key]:6d} {TOTALS[key] / steps * 1000:8.3f}")
        return stats
    engine_backend.EngineBackend.generate_all = report_phases


def main() -> None:
    instrument()
    from localllm.cli.main import app
    sys.argv = ["localllm", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
