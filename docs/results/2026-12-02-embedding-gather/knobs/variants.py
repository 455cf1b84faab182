"""A/B probe: localllm bench latency with launch knobs changed. argv[1]: variants joined by '+'."""
import re
import sys


class Warps:
    """A Triton kernel whose launches take num_warps from here."""
    def __init__(self, kernel, warps):
        self.kernel, self.warps = kernel, warps

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        return lambda *a, **k: launch(*a, **{**k, "num_warps": self.warps})


for variant in sys.argv[1].split("+"):
    name, num = re.fullmatch(r"([a-z]+)(\d*)", variant).groups()
    if name == "rms":
        from localllm.kernels import rmsnorm
        rmsnorm._rms_norm_kernel = Warps(rmsnorm._rms_norm_kernel, int(num))
    elif name == "rope":
        from localllm.kernels import rope_store
        rope_store._rope_store_kernel = Warps(rope_store._rope_store_kernel, int(num))
    elif name == "attn":
        from localllm.kernels import paged_attention_split as split
        plain = split._split_config

        def small_partitions(num_seqs, num_kv_heads, max_context_len, gpu, num_sms, size=int(num)):
            cfg = plain(num_seqs, num_kv_heads, max_context_len, gpu, num_sms)
            if gpu and cfg["MIN_PARTITION"] == 64:
                cfg.update(MIN_PARTITION=size, BLOCK_N=min(size, 32))
            return cfg
        split._split_config = small_partitions
    elif name == "longpps":
        from localllm.kernels import quant_gemv
        quant_gemv._LONG_ROW_TILE["PROGRAMS_PER_SM"] = int(num)
    elif name == "fourpps":
        from localllm.kernels import quant_gemv
        quant_gemv._FOUR_ROW_TILE["PROGRAMS_PER_SM"] = int(num)
    elif name == "fourwarps":
        from localllm.kernels import quant_gemv
        quant_gemv._FOUR_ROW_TILE["num_warps"] = int(num)
    elif name == "fourbn":
        from localllm.kernels import quant_gemv
        quant_gemv._FOUR_ROW_TILE["BLOCK_N"] = int(num)
    elif name == "fourahead":
        from localllm.kernels import quant_gemv
        quant_gemv._FOUR_ROW_TILE["AHEAD"] = int(num)
    elif name == "sixpps":
        from localllm.kernels import quant_gemv
        quant_gemv._SHORT_ROW_TILES["Q6_K"]["PROGRAMS_PER_SM"] = int(num)
    elif name == "gather":   # the logits rows gathered even where they are every row
        from localllm.engine import model_runner
        plain_logits = model_runner.ModelRunner.logits

        def gathered(self, hidden, batch):
            return plain_logits(self, hidden[batch.logits_indices], batch) if batch.logits_indices.numel() else \
                plain_logits(self, hidden, batch)
        model_runner.ModelRunner.logits = gathered
    elif name != "base":
        raise SystemExit(f"unknown variant {variant}")
from localllm.cli.main import app
sys.argv = ["localllm"] + sys.argv[2:]
app()
