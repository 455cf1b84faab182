"""The degree the engine picks by itself on this machine (`localllm serve` without --tp) for random-weight models
of the real configs: the same call the engine core makes (tensor_parallel.resolve_degree with the daemon's default
Config), on the meta device, so nothing is loaded. Prints each GPU's free memory and, per degree that divides the
heads, what one rank would need.

    python scripts/gpu_tp_degree.py llama-3.1-8b llama-3.1-70b --json-out degree.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from localllm.bench.models import random_weight_config
from localllm.config import Config
from localllm.engine.tensor_parallel import resolve_degree
from localllm.engine.tp_degree import GiB, free_gpu_bytes, model_size, shard_bytes, splitting_degrees


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="--random-weights names")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    config, device, dtype = Config(), torch.device("cuda"), torch.bfloat16
    free = free_gpu_bytes()
    report = {"free_gib": [round(f / GiB, 1) for f in free], "models": {}}
    for name in args.models:
        hf_config = random_weight_config(name)
        model_len = config.max_model_len or hf_config.max_position_embeddings   # as the engine core has it
        size = model_size(hf_config, dtype, model_len)
        needs = {tp: round(shard_bytes(size, tp) / GiB, 1)
                 for tp in splitting_degrees(size.num_heads, size.num_kv_heads, len(free))}
        report["models"][name] = {"picked": resolve_degree(config, hf_config, device, dtype, model_len),
                                  "weights_gib": round(size.weight_bytes / GiB, 1), "context": model_len,
                                  "per_rank_need_gib": needs}
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
