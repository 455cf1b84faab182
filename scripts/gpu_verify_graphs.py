"""GPU check of the verify CUDA graphs (run on the GPU machine): speculative greedy decoding of the tiny random-weight
models of the test suite, its verifying steps replayed from graphs (the default on a GPU), gives the same tokens as
plain decoding and as verifying eagerly in the chunk layout (uniform_verify_steps=False); with two GPUs, the same
under tensor parallelism. Prints one line per case; exits 1 on any failure.

    python scripts/gpu_verify_graphs.py
"""
import gc
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from tiny_models import CONFIGS, TP_CONFIGS, build_model_dir  # noqa: E402

from localllm import LLM, SamplingParams  # noqa: E402

# repetitive prompts: greedy continuations of the tiny models repeat parts of them, so drafts get proposed and kept
LOOP = [5, 17, 42, 99, 23, 7, 61, 88]
PROMPTS = [LOOP * 6, [3, 4, 5, 6], LOOP[:5] * 4 + [9, 10], [30, 31, 32, 30, 31, 32, 30, 31]]
PARAMS = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)


def count_replays(graphs) -> list[int]:
    """A one-item counter of the replays `graphs` (None: no graphs) make from now on."""
    replays = [0]
    if graphs is not None:
        run = graphs.run

        def counting(batch):
            replays[0] += 1
            return run(batch)

        graphs.run = counting
    return replays


def generate(model_dir: Path, dtype: str, **config) -> tuple[list[list[int]], int, int]:
    """Tokens of every prompt; verify-graph replays; verifying steps (those that carried drafts)."""
    with LLM(str(model_dir), dtype=dtype, block_size=16, max_model_len=512, max_num_batched_tokens=256,
             **config) as llm:
        core = llm.engine.core
        graphs = core.runner.verify_graphs
        replays = count_replays(graphs)
        tokens = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, PARAMS)]
        verify_steps = core.speculator.stats.verify_steps if core.speculator else 0
    del llm, core, graphs
    gc.collect()
    torch.cuda.empty_cache()
    return tokens, replays[0], verify_steps


def check(name: str, ok: bool, detail: str) -> int:
    print(f"{name:46s} {detail} {'PASS' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for arch in CONFIGS:
            model_dir = build_model_dir(arch, Path(tmp) / arch)
            for dtype in ("float32", "bfloat16"):
                plain, _, _ = generate(model_dir, dtype)
                graphed, replays, steps = generate(model_dir, dtype, speculative="ngram")
                eager, eager_replays, _ = generate(model_dir, dtype, speculative="ngram", uniform_verify_steps=False)
                failures += check(f"{arch} {dtype} verify graphs replayed", replays > 0 and eager_replays == 0,
                                  f"{replays} replays, {steps} verifying steps;")
                # bfloat16 rounds differently with the number of rows a matmul sees: report, do not fail
                exact = dtype == "float32"
                failures += check(f"{arch} {dtype} graphs == plain decoding", graphed == plain or not exact,
                                  f"equal: {graphed == plain};")
                failures += check(f"{arch} {dtype} graphs == eager chunk layout", graphed == eager or not exact,
                                  f"equal: {graphed == eager};")
        if torch.cuda.device_count() >= 2:
            for arch in TP_CONFIGS:
                model_dir = build_model_dir(arch, Path(tmp) / f"tp-{arch}", configs=TP_CONFIGS)
                plain, _, _ = generate(model_dir, "float32")
                graphed, replays, _ = generate(model_dir, "float32", speculative="ngram", tensor_parallel_size=2)
                failures += check(f"{arch} tp=2 float32 graphs == plain decoding", graphed == plain and replays > 0,
                                  f"{replays} replays on rank 0, equal: {graphed == plain};")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
