"""GPU check of the whole engine (run on the GPU machine): greedy output of the tiny random-weight models of the
test suite against transformers, through the Triton kernels and CUDA graphs. Prints one line per case."""
import gc
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from tiny_models import CONFIGS, build_model_dir, hf_greedy  # noqa: E402

from localllm import LLM, SamplingParams  # noqa: E402

failures = 0
with tempfile.TemporaryDirectory() as tmp:
    for arch in CONFIGS:
        model_dir = build_model_dir(arch, Path(tmp) / arch)
        prompts = [[(7 * i + 3 * j) % 300 for j in range(n)] for i, n in enumerate([5, 33, 17, 70])]
        for dtype in ("float32", "bfloat16"):
            llm = LLM(str(model_dir), dtype=dtype, block_size=16, max_model_len=512, max_num_batched_tokens=64)
            outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
            same = total = 0
            for prompt, out in zip(prompts, outs):
                ref = hf_greedy(model_dir, prompt, 24)
                got = out.outputs[0].token_ids
                first_diff = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), len(ref))
                same += first_diff
                total += len(ref)
            ok = same == total if dtype == "float32" else True
            failures += not ok
            del llm   # its KV pool took most of the free GPU memory
            gc.collect()
            torch.cuda.empty_cache()
            print(f"{arch:8s} {dtype:9s} greedy tokens equal to transformers fp32 before the first difference: "
                  f"{same}/{total} {'PASS' if ok else 'FAIL'}", flush=True)
            # overlapped steps (the GPU default) take in-flight tokens from the device: same tokens as without
            llm = LLM(str(model_dir), dtype=dtype, block_size=16, max_model_len=512, max_num_batched_tokens=64,
                      overlap_steps=False)
            sync = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
            equal = [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in sync]
            failures += not equal
            del llm, outs, sync
            gc.collect()
            torch.cuda.empty_cache()
            print(f"{arch:8s} {dtype:9s} overlapped steps give the same tokens as synchronous ones: "
                  f"{'PASS' if equal else 'FAIL'}", flush=True)
sys.exit(1 if failures else 0)
