"""One tensor-parallel rank's share of a model, run alone on one GPU: what a rank computes at degree N without the
communication. Every `--random-weights` config has its attention heads, KV heads (at least one), intermediate size
and vocabulary divided by N (the shapes of one rank's shard: column-parallel qkv and gate/up, row-parallel o and
down, vocab-parallel embedding and LM head), then PROGRAM runs with its arguments: `localllm` or a script.

    python scripts/gpu_tp_rank_share.py 2 localllm bench latency --random-weights llama-3.1-8b
    python scripts/gpu_tp_rank_share.py 2 scripts/step_phases.py bench throughput --random-weights llama-3.1-8b \\
        --workload nano-vllm
    python scripts/gpu_tp_rank_share.py 2 scripts/gpu_tp_profile.py --random-weights llama-3.1-8b --tp 1 --no-pdl

Beside `--tp N` on a machine with N GPUs, the difference is what crossing the GPUs costs (the all-reduces, the
gathered logits, the ranks waiting for each other); on a machine with one GPU it tells what TP=N could reach. Rank
0's sampling over the whole vocabulary is not counted: the share samples over its slice.
"""
from __future__ import annotations

import runpy
import sys

from localllm.bench import models


def rank_share(degree: int):
    """random_weight_config, each config cut to one rank's share at `degree`."""
    whole = models.random_weight_config

    def config(name: str):
        cfg = whole(name)
        for field in ("num_attention_heads", "intermediate_size", "vocab_size"):
            setattr(cfg, field, getattr(cfg, field) // degree)
        cfg.num_key_value_heads = max(1, cfg.num_key_value_heads // degree)   # fewer: replicated over ranks
        return cfg
    return config


def main() -> None:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit(__doc__)
    models.random_weight_config = rank_share(int(sys.argv[1]))
    program, args = sys.argv[2], sys.argv[3:]
    if program == "localllm":
        from localllm.cli.main import app

        sys.argv = ["localllm", *args]
        app()
    else:   # this script's folder is already first on sys.path, so a script finds its neighbours
        sys.argv = [program, *args]
        runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
