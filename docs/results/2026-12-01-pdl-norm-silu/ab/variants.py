"""A/B probe: variants of the dependent launches and the GEMV's L2 prefetch. argv: VARIANT (tokens joined by +:
base, nopdlsmall, pfN (MB), early) then `cli ARGS` or `script PATH ARGS`."""
import runpy
import sys

import triton
import triton.language as tl

tokens = sys.argv[1].split("+")
if "nopdlsmall" in tokens:
    from localllm.kernels import activation, rmsnorm
    activation.pdl_options = rmsnorm.pdl_options = lambda device: {"USE_PDL": False}
for t in tokens:
    if t.startswith("pf"):
        from localllm.kernels import quant_gemv
        quant_gemv.L2_PREFETCH_BYTES = int(t[2:]) << 20


@triton.jit
def early_trigger(USE_PDL: tl.constexpr):
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


if "early" in tokens:
    from localllm.kernels import activation, paged_attention_split, rmsnorm, rope_store
    for module in (activation, paged_attention_split, rmsnorm, rope_store):
        module.wait_for_previous_kernel = early_trigger
if sys.argv[2] == "cli":
    from localllm.cli.main import app
    sys.argv = ["localllm"] + sys.argv[3:]
    app()
else:
    path = sys.argv[3]
    sys.argv = [path] + sys.argv[4:]
    runpy.run_path(path, run_name="__main__")
