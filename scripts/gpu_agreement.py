"""Greedy top-1 agreement between localllm and transformers (the target: >= 99% over 1,000 generated tokens in bf16
on a GPU). Also runs on a CPU in fp32 with fewer tokens, where it should give 100%.

    python scripts/gpu_agreement.py --model PATH.gguf --dtype bfloat16 --new-tokens 1000 --prompts 4 --json-out out.json

With quantized weights (--quantize auto keeps a GGUF's blocks on a GPU; a format quantizes at load), transformers
gets the same weights dequantized to the dtype: the comparison is then of the quantized kernels against dense
matmuls of the very same values. With --kv-cache-dtype fp8 localllm keeps its KV cache in e4m3 (transformers keeps
its own in the dtype): the agreement then measures what the fp8 cache costs, e.g.

    python scripts/gpu_agreement.py --model PATH.gguf --dtype bfloat16 --kv-cache-dtype fp8 --json-out fp8kv.json

--reference-dtype float32 gives transformers the quantized weights exactly (a K-quant's d * scale * q - dmin * min
has more bits than bf16 keeps) and float32 activations: the quantized model itself, against which both localllm's
kernels and transformers in bf16 are approximations.

1. localllm generates greedily (ignore_eos) for each chat prompt, all prompts in one batch as the engine serves them.
2. transformers loads the same converted safetensors directory in the same dtype and runs ONE teacher-forced forward
   over prompt + localllm's tokens per prompt; its argmax at each generated position is compared with localllm's
   token there. This measures per-step agreement without letting one early near-tie derail the rest of the text.
3. transformers' own greedy generate() (EOS ignored) gives the free-running view: the common prefix length.
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

from localllm import LLM, SamplingParams

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a CPU cache works, in detail.",
    "List the countries of Europe and their capitals.",
    "Write Python code for a binary search tree with insert, delete and search.",
    "Describe the water cycle to a ten-year-old, then to a university student.",
    "Write a dialogue between a chess grandmaster and a beginner about openings.",
    "Summarize the history of the Roman Empire from its founding to its fall.",
    "Give a step-by-step recipe for sourdough bread, with timings.",
]
TARGET = 0.99


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help=".gguf file or HF directory (default: the embedded SmolLM2-135M)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--new-tokens", type=int, default=1000)
    p.add_argument("--prompts", type=int, default=4, help=f"how many of the {len(PROMPTS)} built-in prompts")
    p.add_argument("--gpu-memory-fraction", type=float, default=0.5,
                   help="localllm's share of the card; the rest keeps room for transformers should freeing fail")
    p.add_argument("--max-mismatches", type=int, default=20, help="mismatches detailed per prompt in the JSON")
    p.add_argument("--quantize", default="none", help="localllm's weights: none (dense), auto, native or a format "
                                                      "(q4_k_m, q8_0, ...); transformers gets them dequantized")
    p.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                   help="localllm's KV cache: auto (the dtype) or fp8 (e4m3; GPUs of compute capability 8.9+)")
    p.add_argument("--free-running", action=argparse.BooleanOptionalAction, default=True,
                   help="also run transformers' own greedy generation for the common prefix (~1 min on a GPU)")
    p.add_argument("--reference-dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="transformers' dtype (default: --dtype). float32 with a quantized model: the reference is the "
                        "quantized weights exactly, not rounded to bf16 as --dtype bfloat16 rounds them")
    p.add_argument("--reference-weights", choices=["engine", "checkpoint"], default="engine",
                   help="transformers' weights: the engine's (quantized ones dequantized: the kernels' own error), or "
                        "the checkpoint's as they are (what quantizing at load costs as well)")
    p.add_argument("--candidate", choices=["localllm", "transformers"], default="localllm",
                   help="whose greedy tokens are checked: localllm's, or transformers' own in --dtype over the same "
                        "weights (with --reference-dtype float32: what dense --dtype matmuls cost that model)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.reference_dtype = args.reference_dtype or args.dtype
    if not 1 <= args.prompts <= len(PROMPTS):
        p.error(f"--prompts must be in 1..{len(PROMPTS)}")
    return args


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_localllm(args, prompts: list[str]):
    """Greedy generations of localllm; returns (the dense model dir, its weights the engine held quantized,
    dequantized by checkpoint name, (prompt ids, generated ids) per prompt, seconds, what the weights ran as)."""
    from localllm.engine.model_builder import dequantized_weights
    from localllm.loader.resolve import resolve_model

    llm = LLM(args.model, dtype=args.dtype, device=args.device, gpu_memory_fraction=args.gpu_memory_fraction,
              quantization=args.quantize, kv_cache_dtype=args.kv_cache_dtype)
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    seconds = time.perf_counter() - start
    runner = llm.engine.core.runner
    quantized = dequantized_weights(runner.model, getattr(torch, args.reference_dtype))
    ran_as = runner.quantization or args.dtype
    result = [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs]
    # The engine's KV pool holds much of the GPU memory: release it before transformers loads.
    del llm, outs, runner
    free_device_memory()
    return resolve_model(args.model), quantized, result, seconds, ran_as


def transformers_model(model_dir, quantized: dict, dtype: str, device: str):
    """transformers' model of model_dir in dtype, with the weights localllm ran (dequantized) where it held them
    quantized."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    if quantized:   # the very weights localllm ran, dequantized
        state = model.state_dict()
        for name, weight in quantized.items():
            state[name].copy_(weight)
        if getattr(model.config, "tie_word_embeddings", False) and "model.embed_tokens.weight" in quantized:
            model.tie_weights()
    model = model.to(device).eval()
    model.generation_config.eos_token_id = None
    return model


@torch.inference_mode()
def teacher_forced(model, prompt_ids: list[int], gen_ids: list[int], max_mismatches: int) -> dict:
    ids = torch.tensor([prompt_ids + gen_ids], device=model.device)
    # Position i predicts token i + 1: the logits of the last len(gen)+1 positions, less the very last one, are those
    # of the generated tokens (logits_to_keep spares a [seq, vocab] tensor over the prompt).
    logits = model(ids, logits_to_keep=len(gen_ids) + 1).logits[0, :-1].float()
    gen = torch.tensor(gen_ids, device=logits.device)
    top2 = logits.topk(2, dim=-1)
    hf_top1 = top2.indices[:, 0]
    match = hf_top1 == gen
    mismatch_pos = (~match).nonzero().flatten().tolist()
    ours_logit = logits.gather(1, gen[:, None])[:, 0]
    mismatches = [{
        "position": i,
        "localllm_token": gen_ids[i],
        "hf_token": int(hf_top1[i]),
        # small gaps = near-ties that rounding in either implementation can flip
        "hf_top1_minus_top2": float(top2.values[i, 0] - top2.values[i, 1]),
        "hf_top1_minus_localllm_token": float(top2.values[i, 0] - ours_logit[i]),
    } for i in mismatch_pos]
    return {
        "matches": int(match.sum()),
        "total": len(gen_ids),
        "agreement": int(match.sum()) / len(gen_ids),
        "first_mismatch": mismatch_pos[0] if mismatch_pos else None,
        # a tie in HF's own logits (equal values, common in bf16) that argmax broke the other way
        "exact_ties": sum(m["hf_top1_minus_localllm_token"] == 0.0 for m in mismatches),
        "max_gap_of_mismatch": max((m["hf_top1_minus_localllm_token"] for m in mismatches), default=None),
        "mismatches": mismatches[:max_mismatches],
    }


@torch.inference_mode()
def hf_free_running(model, prompt_ids: list[int], new_tokens: int, pad_id: int) -> list[int]:
    ids = torch.tensor([prompt_ids], device=model.device)
    # eos_token_id=None: EOS neither stops nor is masked, the same as localllm's ignore_eos (min_new_tokens then
    # changes nothing, it is set only to say that exactly new_tokens come back); an explicit attention mask, else
    # generate() masks prompt tokens equal to the pad id.
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=pad_id)
    return out[0, len(prompt_ids):].tolist()


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def print_report(report: dict, rows: list[dict], dtype: str, reference_dtype: str) -> None:
    print(f"{'prompt':46s} {'agree':>8s} {'first miss':>10s} {'ties':>5s} {'max gap':>8s} {'free prefix':>11s}")
    for r in rows:
        gap = "-" if r["max_gap_of_mismatch"] is None else f"{r['max_gap_of_mismatch']:.3f}"
        first = "-" if r["first_mismatch"] is None else r["first_mismatch"]
        prefix = "-" if r["free_running_common_prefix"] is None else r["free_running_common_prefix"]
        print(f"{r['prompt'][:46]:46s} {r['agreement']:8.2%} {first!s:>10s} {r['exact_ties']:5d} {gap:>8s} "
              f"{prefix!s:>5s}/{r['generated_tokens']}")
    print(f"top-1 agreement {report['matches']}/{report['total']} = {report['agreement']:.2%} (target >= "
          f"{TARGET:.0%}: {'PASS' if report['meets_target'] else 'FAIL'}) on {report['device']}, {dtype} against "
          f"transformers in {reference_dtype}; "
          f"{report['agreement_counting_exact_ties']:.2%} counting exact ties in HF's logits as matches")


def main() -> None:
    args = parse_args()
    prompts = PROMPTS[:args.prompts]
    model_dir, quantized, generations, localllm_s, ran_as = run_localllm(args, prompts)
    print(f"localllm: {len(prompts)} x {args.new_tokens} tokens in {localllm_s:.1f} s ({args.device}, {args.dtype}, "
          f"weights {ran_as})")
    if args.device.startswith("cuda"):
        print(f"CUDA memory still allocated after freeing localllm: {torch.cuda.memory_allocated() / 2**30:.2f} GiB")

    model = transformers_model(model_dir, quantized if args.reference_weights == "engine" else {},
                               args.reference_dtype, args.device)
    pad_id = model.generation_config.pad_token_id or model.config.pad_token_id or 0
    if args.candidate == "transformers":   # transformers' own greedy tokens in --dtype replace localllm's
        candidate = transformers_model(model_dir, quantized, args.dtype, args.device)
        generations = [(p, hf_free_running(candidate, p, args.new_tokens, pad_id)) for p, _ in generations]
        del candidate
        ran_as = f"transformers {args.dtype} over {ran_as}"

    rows = []
    for text, (prompt_ids, gen_ids) in zip(prompts, generations):
        row = {"prompt": text, "prompt_tokens": len(prompt_ids), "generated_tokens": len(gen_ids)}
        row.update(teacher_forced(model, prompt_ids, gen_ids, args.max_mismatches))
        row["free_running_common_prefix"] = None
        if args.free_running:
            start = time.perf_counter()
            hf_gen = hf_free_running(model, prompt_ids, args.new_tokens, pad_id)
            row["hf_generate_s"] = time.perf_counter() - start
            row["free_running_common_prefix"] = common_prefix(gen_ids, hf_gen)
        rows.append(row)

    matches, total = sum(r["matches"] for r in rows), sum(r["total"] for r in rows)
    # bf16 logits are coarse (one step is 0.125 at 16..32), so HF's top two often tie exactly; localllm's token is
    # then as much HF's top-1 as the one argmax happened to return.
    with_ties = matches + sum(r["exact_ties"] for r in rows)
    report = {
        "model": args.model or "embedded SmolLM2-135M-Instruct", "model_dir": str(model_dir),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype, "reference_dtype": args.reference_dtype, "candidate": args.candidate,
        "reference_weights": args.reference_weights, "weights": ran_as, "quantize": args.quantize,
        "kv_cache_dtype": args.kv_cache_dtype,
        "new_tokens": args.new_tokens,
        "torch": torch.__version__,
        "transformers": transformers.__version__, "localllm_generate_s": localllm_s,
        "matches": matches, "total": total, "agreement": matches / total, "target": TARGET,
        "meets_target": matches / total >= TARGET, "agreement_counting_exact_ties": with_ties / total,
        "prompts": rows,
    }

    print_report(report, rows, args.dtype, args.reference_dtype)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
