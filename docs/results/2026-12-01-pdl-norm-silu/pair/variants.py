"""A/B probe: the two-format GEMV in one launch switched off (nopair). argv: VARIANT then CLI args."""
import sys

if sys.argv[1] == "nopair":
    from localllm.kernels import quant_matmul
    quant_matmul.quant_gemv_pair = lambda *args: False
from localllm.cli.main import app
sys.argv = ["localllm"] + sys.argv[2:]
app()
