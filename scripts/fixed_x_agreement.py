"""Greedy top-1 agreement of a model whose every matmul takes x in the GPU GEMV's fixed point (kernels/fixed_x_ref:
15 bits per group of 32, or 8 with --bits 8, llama.cpp's rounding) with the same model in float32, on a CPU.

The integer GEMV (kernels/quant_int_dots) differs from a dense matmul of the same dequantized weights only by x's
rounding (and the order of float additions), so this measures what the rounding does to greedy tokens where the GPU
cannot hold the model file. transformers generates greedily in float32; then ONE teacher-forced forward with every
nn.Linear's input rounded compares its argmax at each generated position with the generated token.

    python scripts/fixed_x_agreement.py --new-tokens 250 --prompts 4 [--bits 8] [--prompt-only] [--model PATH]

--prompt-only rounds only the prompt's positions (a prefill in fixed point, decode steps exact).
"""
from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from localllm.kernels.fixed_x_ref import fixed_x_ref, fixed_x_values
from localllm.loader.resolve import resolve_model

PROMPTS = ["Write a long story about a lighthouse keeper.", "Explain how a CPU cache works, in detail.",
           "List the countries of Europe and their capitals.",
           "Write Python code for a binary search tree with insert, delete and search."]
GROUP = 32


def rounded(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x with its last dimension in fixed point per GROUP values: 15 bits as the GEMV packs it, or 8 (int8)."""
    flat = x.reshape(-1, x.shape[-1]).float()
    if bits == 15:
        words, scale, _ = fixed_x_ref(flat, GROUP)
        return fixed_x_values(words, scale, GROUP).reshape(x.shape).to(x.dtype)
    groups = flat.reshape(flat.shape[0], -1, GROUP)
    step = groups.abs().amax(-1, keepdim=True) / 127
    return (torch.round(groups / step.clamp_min(1e-30)) * step).reshape(x.shape).to(x.dtype)


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--new-tokens", type=int, default=250)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--bits", type=int, choices=[15, 8], default=15)
    p.add_argument("--prompt-only", action="store_true", help="round the prompt's positions only")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    matches = total = 0
    for text in PROMPTS[:args.prompts]:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)
        upto = prompt.shape[1] if args.prompt_only else out.shape[1]

        def round_input(_, inputs):
            x = inputs[0].clone()
            x[:, :upto] = rounded(x[:, :upto], args.bits)
            return (x,)

        hooks = [m.register_forward_pre_hook(round_input) for m in model.modules() if isinstance(m, torch.nn.Linear)]
        logits = model(out, logits_to_keep=args.new_tokens + 1).logits[0, :-1]
        for hook in hooks:
            hook.remove()
        matches += int((logits.argmax(-1) == out[0, prompt.shape[1]:]).sum())
        total += args.new_tokens
        print(f"{text[:40]:<40} {matches}/{total}", flush=True)
    report = {"model": str(model_dir), "bits": args.bits, "group": GROUP, "prompt_only": args.prompt_only,
              "matches": matches, "total": total, "agreement": matches / total}
    print(json.dumps(report))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
