"""Tensor parallelism against one rank, on GPUs:

  --tiny DIR     fp32: a tiny random Llama (heads split over the ranks, odd vocabulary), greedy tokens of TP=N must
                 equal TP=1's exactly (at N=4 its 2 KV heads are replicated).
  --padded DIR   bf16: SmolLM2-135M (the embedded model) rewritten with 12 query heads over 4 KV heads (its 9 over 3,
                 plus 3 over 1 that add zero) so that 2 or 4 ranks can split it: the same function. TP=N generates
                 greedily; one rank then scores TP=N's tokens teacher-forced (one forward over prompt + tokens) and the
                 top-1 agreement is reported (target >= 99% over 1,000 tokens), with the free-running common prefix.

    python scripts/gpu_tp_agreement.py --tiny /tmp/tiny --json-out fp32.json
    python scripts/gpu_tp_agreement.py --padded /tmp/smollm2-10h --tp 4 --new-tokens 250 --prompts 4 --json-out bf16.json
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from localllm import LLM, SamplingParams
from localllm.engine.request import Sequence
from localllm.engine.scheduler import ScheduledSeq

PROMPTS = ["Write a long story about a lighthouse keeper.", "Explain how a CPU cache works, in detail.",
           "List the countries of Europe and their capitals.", "Describe the water cycle to a ten-year-old."]


def padded_smollm2(out: Path, gguf: Path | None = None) -> Path:
    """The embedded model (9 query heads over 3 KV heads; or its GGUF file given here, on a machine without the
    package) with one more KV group of 3 query heads whose q, k, v and o weights are zero, so 12 over 4: the same
    function, split evenly over 2 (or 4) ranks."""
    from localllm.loader.resolve import resolve_model

    source = resolve_model(str(gguf) if gguf else None)
    config = json.loads((source / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    extra = heads // kv_heads   # one KV group's worth of query heads
    tensors = {}
    for name, t in load_file(str(next(source.glob("*.safetensors")))).items():
        if name.endswith("q_proj.weight"):
            t = torch.cat([t, t.new_zeros(extra * head_dim, t.shape[1])])
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            t = torch.cat([t, t.new_zeros(head_dim, t.shape[1])])
        elif name.endswith("o_proj.weight"):
            t = torch.cat([t, t.new_zeros(t.shape[0], extra * head_dim)], dim=1)
        tensors[name] = t.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    config.update(num_attention_heads=heads + extra, num_key_value_heads=kv_heads + 1, head_dim=head_dim)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def generate(model: str, tp: int, dtype: str, prompts, max_tokens: int, allreduce: str = "nccl",
             alone: bool = False) -> list[list[int]]:
    """(prompt ids, greedy ids) of each prompt: all in one batch, or alone (one-token decode steps, the fused
    kernels' path) one after the other."""
    greedy = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    with LLM(model, tensor_parallel_size=tp, dtype=dtype, gpu_memory_fraction=0.3,
             tp_allreduce=allreduce if tp > 1 else "nccl") as llm:
        run = ((lambda ps: llm.chat([[{"role": "user", "content": p}] for p in ps], greedy))
               if isinstance(prompts[0], str) else (lambda ps: llm.generate(ps, greedy)))
        outs = [o for p in prompts for o in run([p])] if alone else run(prompts)
        result = [(o.prompt_token_ids, o.outputs[0].token_ids) for o in outs]
    gc.collect()
    torch.cuda.empty_cache()
    return result


def teacher_forced_top1(model: str, dtype: str, pairs) -> list[list[int]]:
    """One rank's argmax at every generated position, given the prompt and the tokens before it."""
    with LLM(model, tensor_parallel_size=1, dtype=dtype, gpu_memory_fraction=0.3) as llm:
        core = llm.engine.core
        predictions = []
        for prompt, tokens in pairs:
            seq = Sequence("score", prompt + tokens[:-1], SamplingParams())
            core.block_manager.allocate(seq, len(seq))
            batch = dataclasses.replace(core.batch_builder.build([ScheduledSeq(seq, len(seq))]),
                                        logits_indices=torch.arange(len(prompt) - 1, len(seq), device=core.device))
            predictions.append(core.runner.forward(batch).argmax(-1).tolist())
            core.block_manager.free_sequence(seq)
    return predictions


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", type=Path)
    p.add_argument("--padded", type=Path)
    p.add_argument("--gguf", type=Path, help="with --padded: the embedded model's GGUF file (default: its package)")
    p.add_argument("--new-tokens", type=int, default=250)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--tp", type=int, default=2, help="the degree compared with one rank")
    p.add_argument("--allreduce", default="nccl", help="the all-reduce of TP=N (nccl, symm_mem, fused)")
    p.add_argument("--alone", action="store_true", help="generate for each prompt alone: batch-1 decode steps")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import TP_CONFIGS, build_model_dir

        model = str(build_model_dir("llama", args.tiny, configs=TP_CONFIGS))
        rng = random.Random(0)
        prompts = [[rng.randrange(300) for _ in range(n)] for n in (7, 30, 100, 3)]
        one = generate(model, 1, "float32", prompts, args.new_tokens, alone=args.alone)
        many = generate(model, args.tp, "float32", prompts, args.new_tokens, args.allreduce, args.alone)
        result = {"model": "tiny llama (4 heads, 2 KV heads, vocab 331)", "dtype": "float32", "tp": args.tp,
                  "allreduce": args.allreduce, "alone": args.alone,
                  "tokens": sum(len(t) for _, t in one), "identical": one == many,
                  "common_prefix": [common_prefix(a[1], b[1]) for a, b in zip(one, many)]}
    else:
        model = str(padded_smollm2(args.padded, args.gguf))
        many = generate(model, args.tp, "bfloat16", PROMPTS[:args.prompts], args.new_tokens, args.allreduce,
                        args.alone)
        one = generate(model, 1, "bfloat16", PROMPTS[:args.prompts], args.new_tokens, alone=args.alone)
        predicted = teacher_forced_top1(model, "bfloat16", many)
        agree = sum(p == t for pred, (_, tokens) in zip(predicted, many) for p, t in zip(pred, tokens))
        total = sum(len(tokens) for _, tokens in many)
        result = {"model": "SmolLM2-135M padded to 12 heads over 4 KV heads", "dtype": "bfloat16", "tp": args.tp,
                  "allreduce": args.allreduce, "alone": args.alone,
                  "tokens": total, "teacher_forced_top1_agreement": agree / total, "target": 0.99,
                  "free_running_common_prefix": [common_prefix(a[1], b[1]) for a, b in zip(one, many)]}
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
