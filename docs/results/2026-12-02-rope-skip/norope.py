"""bench latency with the rope/KV-store launch skipped in decode steps (tokens are wrong: an upper bound on what
fusing it into attention could save). argv[1]: base | norope; the rest to share/variants.py."""
import runpy
import sys

from localllm.kernels import rope_store

plain = rope_store.norm_rope_store


def skipped(positions, q, *args, **kwargs):
    if q.shape[0] <= 1:   # decode at batch 1 (graphs of one token); prompts keep the real kernel
        return q
    return plain(positions, q, *args, **kwargs)


if sys.argv[1] == "norope":
    rope_store.norm_rope_store = skipped
sys.argv = ["docs/results/2026-12-02-rank-share/share/variants.py", *sys.argv[2:]]
runpy.run_path("docs/results/2026-12-02-rank-share/share/variants.py", run_name="__main__")
