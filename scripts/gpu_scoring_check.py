"""GPU check of prompt logprobs and logit_bias (run on the GPU machine) on the tiny random-weight models of the test
suite, through the Triton kernels and CUDA graphs of prompt and mixed steps, with overlapped steps: in float32 each
prompt token's logprob and top 3 equal transformers', and a +100 bias forces its token, a -100 one picks the runner-up.
Then, with --random-weights, the time a 1,024-token prompt takes to score, beside the same prompt generating one
token. Prints one line per case.

    python scripts/gpu_scoring_check.py [--random-weights llama-3.1-8b]
"""
import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from tiny_models import CONFIGS, build_model_dir  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from localllm import LLM, SamplingParams  # noqa: E402

PROMPT = [(7 * j + 3) % 300 for j in range(70)]


def transformers_scores(model_dir: Path, k: int) -> list[tuple[int, float, list[int]]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([PROMPT])).logits[0].float(), -1)
    return [(PROMPT[i + 1], logprobs[i, PROMPT[i + 1]].item(), logprobs[i].topk(k).indices.tolist())
            for i in range(len(PROMPT) - 1)]


def check_model(arch: str, model_dir: Path) -> int:
    want = transformers_scores(model_dir, 3)
    failures = 0
    # a 64-token budget: the 70-token prompt takes two steps, the second a mixed step's graph
    with LLM(str(model_dir), dtype="float32", block_size=16, max_model_len=512, max_num_batched_tokens=64) as llm:
        out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=3))[0]
        got = [(e.token_id, e.logprob, [i for i, _ in e.top_logprobs]) for e in out.prompt_logprobs[1:]]
        worst = max(abs(g[1] - w[1]) for g, w in zip(got, want))
        ok = [(t, top) for t, _, top in got] == [(t, top) for t, _, top in want] and worst < 1e-4
        failures += not ok
        print(f"{arch:8s} prompt logprobs and top 3 equal transformers fp32 (worst {worst:.1e}): "
              f"{'PASS' if ok else 'FAIL'}", flush=True)
        greedy = dict(temperature=0, ignore_eos=True)
        top_two = llm.generate([PROMPT], SamplingParams(max_tokens=1, logprobs=2, **greedy))[0]
        best, runner_up = (i for i, _ in top_two.outputs[0].logprobs[0].top_logprobs)
        forced = llm.generate([PROMPT], SamplingParams(max_tokens=6, logit_bias={7: 100.0}, **greedy))[0]
        banned = llm.generate([PROMPT], SamplingParams(max_tokens=1, logit_bias={best: -100.0}, **greedy))[0]
        ok = forced.outputs[0].token_ids == [7] * 6 and banned.outputs[0].token_ids == [runner_up]
        failures += not ok
        print(f"{arch:8s} logit_bias forces (+100) and bans (-100, the runner-up follows) on the overlapped "
              f"on-device pick: {'PASS' if ok else 'FAIL'}", flush=True)
    gc.collect()
    torch.cuda.empty_cache()
    return failures


def time_scoring(name: str) -> None:
    """A random-weight model (bench's --random-weights names), bf16: a 1,024-token prompt generating one token, then
    scoring its prompt too with its best token (what lm-evaluation-harness asks), then with the top 5 (median of 7
    after one untimed, a different prompt each time: no cached prefix)."""
    from localllm.bench.engine_backend import EngineBackend
    from localllm.bench.models import open_bench_model

    backend = EngineBackend(open_bench_model(None, name), "bfloat16", max_model_len=2048)
    for label, params in (("plain", SamplingParams(temperature=0, max_tokens=1)),
                          ("scored k=1", SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)),
                          ("scored k=5", SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=5))):
        times = []
        for run in range(8):
            prompt = [(11 * j + 5 + run) % 1000 for j in range(1024)]
            start = time.perf_counter()
            backend._add(prompt, params)
            backend._run_to_completion()
            times.append(time.perf_counter() - start)
        print(f"{name}: a 1,024-token prompt, {label}: {sorted(times[1:])[3] * 1000:.1f} ms", flush=True)
    backend.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--random-weights", help="also time scoring a 1,024-token prompt of this architecture")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for arch in CONFIGS:
            failures += check_model(arch, build_model_dir(arch, Path(tmp) / arch))
    if args.random_weights:
        time_scoring(args.random_weights)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
