"""A/B probe: the SiLU-and-mul epilogue of the quantized GEMV switched off (nogated). argv: VARIANT then CLI args."""
import sys

if sys.argv[1] == "nogated":
    from localllm.kernels.activation import silu_and_mul
    from localllm.layers import quantized
    plain = quantized.BlockLayout.matmul

    def unfused(self, x, weight, gated=False):
        y = plain(self, x, weight)
        return silu_and_mul(y) if gated else y
    quantized.BlockLayout.matmul = unfused
from localllm.cli.main import app
sys.argv = ["localllm"] + sys.argv[2:]
app()
