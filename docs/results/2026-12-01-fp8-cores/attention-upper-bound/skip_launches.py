"""`localllm bench ...` with launches of the decode step skipped, for timing only (the output is wrong):
    python3 skip_launches.py VARIANT bench latency --random-weights llama-3.1-8b --quantize q4_k_m --json-out F
VARIANT: base (nothing skipped), noreduce (split-K attention's reduction kernel), norope (rope + K/V store), noboth."""
import sys


class _Skipped:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


variant = sys.argv[1]
if variant in ("noreduce", "noboth"):
    from localllm.kernels import paged_attention_split
    paged_attention_split._decode_reduce_kernel = _Skipped()
if variant in ("norope", "noboth"):
    from localllm.kernels import rope_store
    rope_store._rope_store_kernel = _Skipped()
from localllm.cli.main import app  # noqa: E402

sys.argv = ["localllm"] + sys.argv[2:]
app()
