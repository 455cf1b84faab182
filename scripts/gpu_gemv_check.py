"""The fused decode GEMV (kernels/gemv.py) on a GPU: checked against its reference in bf16, and timed inside CUDA
graphs against what it replaces (the RMSNorm or SiLU-and-mul kernel + cuBLAS + the residual add) at the projection
shapes of Qwen3-0.6B, Llama-3.2-1B and Llama-3.1-8B (whole, and one rank's shards at TP=2), 1-8 rows; then a sweep of
its tiles at one row.

    python scripts/gpu_gemv_check.py [--json OUT.json] [--no-sweep]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import graph_time_us, open_gpu  # noqa: E402

COPY_TB_S = 4.18            # H200 copy bandwidth, as `localllm bench` measures it
L2_MISS_BYTES = 256 << 20   # weights rotated over copies of at least this many bytes miss the L2
# model: matrix -> (N, K, what is fused around it)
SHAPES = {
    "qwen3-0.6b": {"qkv": (4096, 1024, "norm"), "o": (1024, 2048, "residual"), "gate_up": (6144, 1024, "norm"),
                   "down": (1024, 3072, "silu_residual"), "lm_head": (151936, 1024, "plain")},
    "llama-3.2-1b": {"qkv": (3072, 2048, "norm"), "o": (2048, 2048, "residual"), "gate_up": (16384, 2048, "norm"),
                     "down": (2048, 8192, "silu_residual"), "lm_head": (128256, 2048, "plain")},
    "llama-3.1-8b": {"qkv": (6144, 4096, "norm"), "o": (4096, 4096, "residual"), "gate_up": (28672, 4096, "norm"),
                     "down": (4096, 14336, "silu_residual"), "lm_head": (128256, 4096, "plain")},
    # one rank's shards at tensor_parallel_size 2, where o and down run the GEMV whatever their size
    "llama-3.1-8b-tp2": {"qkv": (3072, 4096, "plain"), "o": (4096, 2048, "residual"),
                         "down": (4096, 7168, "silu_residual")},
}
SWEEP = [(bn, bk, warps) for bn in (2, 4, 8, 16, 32) for bk in (256, 512, 1024) for warps in (4, 8)
         if bn * bk <= 16384]
SWEPT = {("qwen3-0.6b", "qkv"), ("qwen3-0.6b", "lm_head"), ("llama-3.2-1b", "gate_up"), ("llama-3.1-8b", "gate_up"),
         ("llama-3.1-8b-tp2", "o"), ("llama-3.1-8b-tp2", "down")}


def _inputs(m: int, n: int, k: int, fused: str, gen):
    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=gen).to(torch.bfloat16)
    x = randn(m, 2 * k if fused == "silu_residual" else k)
    norm = ((torch.rand(k, device="cuda", generator=gen) + 0.5).to(torch.bfloat16), 1e-5) if fused == "norm" else None
    residual = randn(m, n) if fused.endswith("residual") else None
    return x, norm, residual


def _calls(m, n, k, fused, gen):
    """(fused call, unfused call) of one weight, same inputs."""
    from localllm.kernels.activation import silu_and_mul
    from localllm.kernels.gemv import gemv
    from localllm.kernels.rmsnorm import rms_norm

    x, norm, residual = _inputs(m, n, k, fused, gen)
    silu = fused == "silu_residual"

    def fused_call(w, config=None, num_warps=4):
        return gemv(x, w, norm=norm, silu_mul=silu, residual=residual, config=config, num_warps=num_warps)

    def unfused_call(w):
        h = rms_norm(x, *norm) if norm is not None else silu_and_mul(x) if silu else x
        y = torch.matmul(h, w.t())
        return y if residual is None else y + residual
    return fused_call, unfused_call, (x, norm, residual)


def check_and_time(model: str, matrix: str, m: int, weights: list, gen, failures: list) -> dict:
    from localllm.kernels.gemv_ref import gemv_ref

    n, k, fused = SHAPES[model][matrix]
    fused_call, unfused_call, (x, norm, residual) = _calls(m, n, k, fused, gen)
    want = gemv_ref(x.float(), weights[0].float(), norm=(norm[0].float(), norm[1]) if norm else None,
                    silu_mul=fused == "silu_residual", residual=residual.float() if residual is not None else None)
    got = fused_call(weights[0]).float()
    err = ((got - want).abs() / (want.abs() + 1)).max().item()
    if err > 0.05:
        failures.append(f"{model} {matrix} M={m}: max relative error {err:.3g}")
    nbytes = weights[0].nbytes
    fused_us = graph_time_us(lambda: [fused_call(w) for w in weights]) / len(weights)
    unfused_us = graph_time_us(lambda: [unfused_call(w) for w in weights]) / len(weights)
    row = {"model": model, "matrix": matrix, "m": m, "n": n, "k": k, "fused": fused, "fused_us": fused_us,
           "unfused_us": unfused_us, "fused_pct": 100 * nbytes / fused_us / 1e6 / COPY_TB_S,
           "unfused_pct": 100 * nbytes / unfused_us / 1e6 / COPY_TB_S, "max_rel_err": err}
    print(f"{model:<13} {matrix:<8} M={m}  gemv {fused_us:7.1f} us ({row['fused_pct']:5.1f}%)  "
          f"unfused {unfused_us:7.1f} us ({row['unfused_pct']:5.1f}%)  err {err:.2g}", flush=True)
    return row


def sweep(model: str, matrix: str, weights: list, gen) -> dict:
    n, k, fused = SHAPES[model][matrix]
    fused_call, _, _ = _calls(1, n, k, fused, gen)
    results = []
    for bn, bk, warps in SWEEP:
        us = graph_time_us(lambda: [fused_call(w, (1, bn, bk), warps) for w in weights]) / len(weights)
        results.append({"block_n": bn, "block_k": bk, "warps": warps, "us": us})
    best = min(results, key=lambda r: r["us"])
    print(f"sweep {model:<13} {matrix:<8} best {best}  {100 * weights[0].nbytes / best['us'] / 1e6 / COPY_TB_S:.1f}%",
          flush=True)
    return {"model": model, "matrix": matrix, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    if not open_gpu():
        return 1
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows, sweeps, failures = [], [], []
    for model, matrices in SHAPES.items():
        for matrix, (n, k, _) in matrices.items():
            weight = (torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).to(torch.bfloat16)
            weights = [weight] + [weight.clone() for _ in range(max(0, L2_MISS_BYTES // weight.nbytes - 1))]
            for m in (1, 2, 4, 8):
                rows.append(check_and_time(model, matrix, m, weights, gen, failures))
            if not args.no_sweep and (model, matrix) in SWEPT:
                sweeps.append(sweep(model, matrix, weights, gen))
            del weights, weight
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "sweeps": sweeps, "failures": failures}, indent=1))
    print("\n".join(failures) or "all GEMV checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
