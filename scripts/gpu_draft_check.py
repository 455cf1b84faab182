"""GPU check of speculative decoding with a draft model (run on the GPU machine): the tiny random Llama of the test
suite as its own draft (every draft kept) and with an unrelated draft of the same vocabulary (none kept), greedy;
float32 tokens must equal plain decoding's, and the draft's proposing steps must replay its decode graphs. Prints
one line per case; exits 1 on any failure.

    python scripts/gpu_draft_check.py
"""
import gc
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from gpu_verify_graphs import count_replays  # noqa: E402  (this script's folder is on the path)
from tiny_models import build_model_dir  # noqa: E402

from localllm import LLM, SamplingParams  # noqa: E402

LOOP = [5, 17, 42, 99, 23, 7, 61, 88]
PROMPTS = [LOOP * 6, [3, 4, 5, 6], LOOP[:5] * 4 + [9, 10], [30, 31, 32, 30, 31, 32, 30, 31]]
PARAMS = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
SETUP = dict(block_size=16, max_model_len=512)


def speculative_run(target: str, draft: str, dtype: str) -> tuple[list[list[int]], object, int]:
    """Tokens, the speculation counters and how many draft decode-graph replays the run made."""
    with LLM(target, dtype=dtype, speculative=f"draft:{draft}", **SETUP) as llm:
        core = llm.engine.core
        replays = count_replays(core.speculator.draft.runner.decode_graphs)
        tokens = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, PARAMS)]
        stats = core.speculator.stats
    gc.collect()
    torch.cuda.empty_cache()
    return tokens, stats, replays[0]


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        target = str(build_model_dir("llama", Path(tmp) / "target"))
        unrelated = str(build_model_dir("llama", Path(tmp) / "unrelated", seed=1))
        for dtype in ("float32", "bfloat16"):
            with LLM(target, dtype=dtype, **SETUP) as llm:
                plain = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, PARAMS)]
            for name, draft in (("itself", target), ("unrelated", unrelated)):
                tokens, stats, replays = speculative_run(target, draft, dtype)
                # bfloat16: a verifying step's rows may round differently from one-token steps, so only reported
                ok = replays > 0 and (tokens == plain or dtype != "float32")
                failures += not ok
                print(f"{dtype} draft={name}: equal to plain {tokens == plain}, {stats.accepted}/{stats.proposed} "
                      f"drafts kept in {stats.verify_steps} verifying steps, {replays} draft graph replays "
                      f"{'PASS' if ok else 'FAIL'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
