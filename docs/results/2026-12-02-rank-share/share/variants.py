"""One rank's share of a TP=N model, run alone on one GPU (the division scripts/gpu_tp_rank_share.py makes):
`--random-weights llama-3.1-8b@tp2` builds the 8B config with heads, KV heads, intermediate size and vocabulary
divided by 2. argv[1] 'phases' runs step_phases' timers, 'script PATH' a script, anything else localllm."""
import sys
sys.path.insert(0, "scripts")
from localllm.bench import models

plain = models.random_weight_config


def ranked(name):
    if "@tp" not in name:
        return plain(name)
    base, n = name.split("@tp")
    n = int(n)
    cfg = plain(base)
    cfg.num_attention_heads //= n
    cfg.num_key_value_heads = max(1, cfg.num_key_value_heads // n)
    cfg.intermediate_size //= n
    cfg.vocab_size //= n
    return cfg


models.random_weight_config = ranked
if sys.argv[1] == "phases":
    import step_phases
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    step_phases.main()
elif sys.argv[1] == "script":   # variants.py script PATH ARGS: a script under these configs
    import runpy
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    from localllm.cli.main import app
    sys.argv = ["localllm", *sys.argv[1:]]
    app()
