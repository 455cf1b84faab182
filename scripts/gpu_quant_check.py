#!/usr/bin/env python3
"""GPU check of the quantized matmuls (localllm.kernels.quant_matmul): every block format against
quant_matmul_ref (dequantize, then matmul) in bf16, then timings at Llama-3.1-8B's shapes beside bf16 torch.matmul.

    python3 scripts/gpu_quant_check.py --json-out quant-kernels.json   # about a minute on an H100/H200
    python3 scripts/gpu_quant_check.py --no-bench                      # checks only

Timings are CUDA-graph replays (no launch overhead) over enough copies of the weight to miss the L2 cache; the
GEMV's figure is the weight bytes read per second, the GEMM's TFLOP/s. Exits 1 if any check FAILs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_kernel_check import _import_kernels, graph_time_us  # noqa: E402

FORMATS = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "int4_g128", "fp8_e4m3_g128"]
# (name, N, K) of Llama-3.1-8B's matrices: fused q/k/v, o, fused gate/up, down
SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]
L2_MISS_BYTES = 256 << 20
failures: list[str] = []


def check(fmt: str, m: int, n: int, k: int, gen) -> dict:
    from localllm.kernels.quant_matmul import quant_matmul
    from localllm.kernels.quant_blocks_ref import quant_matmul_ref
    from localllm.kernels.quantize_ref import quantize_ref

    raw = quantize_ref(torch.randn(n, k, device="cuda", generator=gen) * 0.02, fmt)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    got = quant_matmul(x, raw, fmt)
    want = quant_matmul_ref(x.float(), raw, fmt)
    error = float((got.float() - want).abs().max() / want.abs().max())
    ok = bool(torch.isfinite(got).all()) and error < 2e-2
    name = f"{fmt} M={m} N={n} K={k}"
    print(f"{'PASS' if ok else 'FAIL'}  {name:<36} relative max error {error:.2e}", flush=True)
    if not ok:
        failures.append(name)
    return {"format": fmt, "m": m, "n": n, "k": k, "relative_max_error": error, "pass": ok}


def check_all(gen) -> list[dict]:
    rows = []
    for fmt in FORMATS:
        for m in (1, 3, 8, 9, 64, 1000):
            rows.append(check(fmt, m, 1536, 2048, gen))
        rows.append(check(fmt, 1, 4096, 14336, gen))
    return rows


def _copies(nbytes: int) -> int:
    return max(1, L2_MISS_BYTES // max(nbytes, 1))


def time_case(fmt: str | None, name: str, m: int, n: int, k: int, gen) -> dict:
    """One matmul shape: GPU microseconds per call and what they make (GB/s of weights; TFLOP/s)."""
    from localllm.kernels.quant_matmul import quant_matmul
    from localllm.kernels.quantize_ref import quantize_ref

    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    if fmt is None:
        weights = [torch.randn(n, k, device="cuda", generator=gen).to(torch.bfloat16)]
        weights += [w.clone() for w in weights * (_copies(weights[0].nbytes) - 1)]
        call = lambda w: torch.matmul(x, w.t())   # noqa: E731
    else:
        weights = [quantize_ref(torch.randn(n, k, device="cuda", generator=gen) * 0.02, fmt)]
        weights += [w.clone() for w in weights * (_copies(weights[0].nbytes) - 1)]
        call = lambda w: quant_matmul(x, w, fmt)   # noqa: E731
    us = graph_time_us(lambda: [call(w) for w in weights]) / len(weights)
    nbytes = weights[0].nbytes
    row = {"format": fmt or "bf16", "matrix": name, "m": m, "n": n, "k": k, "us": us, "weight_bytes": nbytes,
           "weight_gb_s": nbytes / us / 1e3, "tflop_s": 2 * m * n * k / us / 1e6}
    print(f"{row['format']:<10} {name:<8} M={m:<5} {us:9.1f} us  {row['weight_gb_s']:8.1f} GB/s  "
          f"{row['tflop_s']:7.1f} TFLOP/s", flush=True)
    del weights
    torch.cuda.empty_cache()
    return row


def bench(gen) -> list[dict]:
    rows = []
    for fmt in (None, *FORMATS):
        for name, n, k in SHAPES:
            for m in (1, 8, 1024):
                rows.append(time_case(fmt, name, m, n, k, gen))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-bench", action="store_true", help="correctness checks only")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("FAIL  no CUDA device")
        return 1
    import triton
    _import_kernels()
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    start = time.time()
    gen = torch.Generator(device="cuda").manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "checks": check_all(gen)}
    if not args.no_bench:
        report["timings"] = bench(gen)
    report["seconds"] = time.time() - start
    report["failures"] = failures
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print("FAILED: " + ", ".join(failures) if failures else "ALL PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
