#!/usr/bin/env python3
"""GPU check of the quantized matmuls (localllm.kernels.quant_matmul, over the planes of quant_planes_ref): every
block format against quant_matmul_ref (dequantize the blocks, then matmul) in bf16, then timings at Llama-3.1-8B's
shapes beside bf16 torch.matmul, then a sweep of GEMV tiles at one row of x.

    python3 scripts/gpu_quant_check.py --json-out quant-kernels.json   # a few minutes on an H100/H200
    python3 scripts/gpu_quant_check.py --no-bench                      # checks only

Timings are CUDA-graph replays (no launch overhead) over enough copies of the weight to miss the L2 cache. Each row
gives the weight bytes read per second and their share of the copy roofline (COPY_TB_S; what counts for the GEMV),
and TFLOP/s (what counts at M = 1024, where the weight is dequantized to bf16 and cuBLAS multiplies); M=0 rows time
the dequantize kernel alone. Exits 1 if any check FAILs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import graph_time_us, open_gpu  # noqa: E402

FORMATS = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "int4_g128", "fp8_e4m3_g128"]
# (name, N, K) of Llama-3.1-8B's matrices: fused q/k/v, o, fused gate/up, down, LM head
SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
          ("lm_head", 128256, 4096)]
COPY_TB_S = 4.18            # H200's measured copy bandwidth: the GEMV's roofline
L2_MISS_BYTES = 256 << 20
# timed at every shape (the formats of the 8B benchmarks; the others are checked only, or timed with --all-formats)
BENCH_FORMATS = ["Q4_K", "Q6_K", "Q8_0", "int4_g128", "fp8_e4m3_g128"]
# the GEMV tiles tried at one row of x, by rows a tile, warps, programs a SM and row tiles read ahead (gemv_config's
# defaults among them)
SWEEP_FORMATS = ["Q4_K", "Q6_K", "Q8_0", "Q4_1"]
# (BLOCK_U: gemv_config's, the whole row where it fits)
SWEEP_TILES = [dict(BLOCK_N=bn, num_warps=w, PROGRAMS_PER_SM=p, AHEAD=a) for bn in (1, 2, 4) for w in (4, 8)
               for p in (2, 4) for a in (1, 2)]
# rows of x at which every path is timed (--paths), and the dot kernel's tiles tried at 8 of them
PATH_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# FP8 weights also at these rows
FP8 = "fp8_e4m3_g128"
FP8_PATH_ROWS = (512, 1024, 4096)
DOT_SWEEP_TILES = [dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_U=bu, num_warps=w) for bn in (64, 128, 256) for bu in (2, 4, 8)
                   for w in (4, 8)]
failures: list[str] = []


def _report(name: str, ok: bool, detail: str = "", failure: str | None = None) -> None:
    """One PASS / FAIL line; a failure is listed (as `failure`, by default the name) for the exit status."""
    print(f"{'PASS' if ok else 'FAIL'}  {name:<36} {detail}".rstrip(), flush=True)
    if not ok:
        failures.append(failure or name)


def _random_blocks(fmt: str, n: int, k: int, gen) -> torch.Tensor:
    """A random [n, k] weight (weights of scale 0.02) quantized to fmt's block rows, on the GPU."""
    from localllm.kernels.quantize_ref import quantize_ref

    return quantize_ref(torch.randn(n, k, device="cuda", generator=gen) * 0.02, fmt)


def check(fmt: str, m: int, n: int, k: int, gen) -> dict:
    """quant_matmul's choice of path against its reference: FP8 weights on the FP8 tensor cores against
    fp8_matmul_ref (x quantized as the kernel quantizes it), every other path against quant_matmul_ref."""
    from localllm.kernels.fp8_gemm_ref import fp8_matmul_ref
    from localllm.kernels.quant_blocks_ref import quant_matmul_ref
    from localllm.kernels.quant_matmul import chosen_path, quant_matmul
    from localllm.kernels.quant_planes_ref import pack_planes

    raw = _random_blocks(fmt, n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    planes = pack_planes(raw, fmt)
    got = quant_matmul(x, planes, fmt)
    if chosen_path(fmt, m, n, x) == "fp8":
        want = fp8_matmul_ref(x.float(), planes)
    else:
        want = quant_matmul_ref(x.float(), raw, fmt)
    error = float((got.float() - want).abs().max() / want.abs().max())
    ok = bool(torch.isfinite(got).all()) and error < 2e-2
    _report(f"{fmt} M={m} N={n} K={k}", ok, f"relative max error {error:.2e}")
    return {"format": fmt, "m": m, "n": n, "k": k, "relative_max_error": error, "pass": ok}


def check_exact_dequantize(fmt: str, gen) -> dict:
    """The dense path's weights (float32) against the blocks' reference, bit for bit but for fused multiply-adds."""
    from localllm.kernels.quant_blocks_ref import dequantize_ref
    from localllm.kernels.quant_matmul import dequantize_rows
    from localllm.kernels.quant_planes_ref import pack_planes

    raw = _random_blocks(fmt, 300, 2048, gen)
    got = dequantize_rows(pack_planes(raw, fmt), fmt, 0, 300, torch.empty(300, 2048, device="cuda"))
    want = dequantize_ref(raw, fmt)
    error = float((got - want).abs().max() / want.abs().max())   # a fused d * q - m rounds once, near 0 too
    ok = error < 1e-6
    _report(f"{fmt} dequantize float32", ok, f"relative max error {error:.2e}", f"{fmt} dequantize")
    return {"format": fmt, "dequantize_relative_max_error": error, "pass": ok}


def check_gated(fmt: str, m: int, n: int, k: int, gen) -> dict:
    """gated (a merged [gate; up] weight): silu(gate) * up stored by the GEMV itself (where it does:
    gates_itself), in bf16, against silu_and_mul of the plain output, which it must equal to the bit."""
    from localllm.kernels.activation import silu_and_mul
    from localllm.kernels.quant_gemv import gates_itself
    from localllm.kernels.quant_matmul import quant_matmul
    from localllm.kernels.quant_planes_ref import pack_planes

    planes = pack_planes(_random_blocks(fmt, n, k, gen), fmt)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    got = quant_matmul(x, planes, fmt, gated=True)
    want = silu_and_mul(quant_matmul(x, planes, fmt))
    ok = torch.equal(got, want)
    where = "in the GEMV" if gates_itself(fmt, n, k, x.device, True) else "after it"
    _report(f"{fmt} gated ({where}) M={m} N={n} K={k}", ok, f"{int((got != want).sum())} values differ")
    return {"format": fmt, "m": m, "n": n, "k": k, "gated": True, "pass": ok}


def check_pair(first: str, second: str, m: int, n: tuple[int, int], k: int, gen) -> dict:
    """Two weights in two formats in one launch (merged_matmul: Q4_K_M's Q4_K q/k beside its Q6_K v), in bf16,
    against each one's own GEMV, which they must equal to the bit."""
    from localllm.kernels.quant_matmul import merged_matmul, quant_matmul
    from localllm.kernels.quant_planes_ref import pack_planes

    planes = [pack_planes(_random_blocks(fmt, rows, k, gen), fmt) for fmt, rows in zip((first, second), n)]
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    got = torch.empty(m, sum(n), device="cuda", dtype=torch.bfloat16)
    merged_matmul(x, [(planes[0], first, got[:, :n[0]]), (planes[1], second, got[:, n[0]:])], {})
    want = torch.cat([quant_matmul(x, planes[0], first), quant_matmul(x, planes[1], second)], 1)
    ok = torch.equal(got, want)
    _report(f"{first}+{second} one launch M={m} N={n[0]}+{n[1]} K={k}", ok,
            f"{int((got != want).sum())} values differ")
    return {"formats": [first, second], "m": m, "n": list(n), "k": k, "pass": ok}


def check_embedding(fmt: str, gen) -> dict:
    """An embedding kept as planes (BlockLayout.rows_of: the dequantize kernel gathering rows by index): its rows
    in bf16, the reference's rounded, to the bit."""
    from localllm.kernels.quant_blocks_ref import dequantize_ref
    from localllm.layers.quantized import BlockLayout

    raw = _random_blocks(fmt, 1000, 4096, gen)
    layout = BlockLayout.of(1000, 4096, [(0, 1000, fmt)], packed=True)
    weight = torch.empty(layout.nbytes, dtype=torch.uint8, device="cuda")
    layout.write_rows(weight, layout.parts[0], 0, raw)
    index = torch.tensor([[999, 0, 17], [17, 500, 3]], device="cuda")
    got = layout.rows_of(weight, index, torch.bfloat16)
    ok = torch.equal(got, dequantize_ref(raw, fmt)[index].bfloat16())
    _report(f"{fmt} embedding rows bf16", ok, failure=f"{fmt} embedding")
    return {"format": fmt, "embedding_rows": True, "pass": ok}


def check_all(gen) -> list[dict]:
    rows = []
    for fmt in FORMATS:
        for m in (1, 3, 8, 9, 64, 65, 1000):
            rows.append(check(fmt, m, 1536, 2048, gen))
        rows.append(check(fmt, 1, 4096, 14336, gen))      # split K
        rows.append(check(fmt, 2, 1000, 4096, gen))       # a partial row tile
        rows.append(check(fmt, 20, 1000, 4096, gen))      # the dot kernel: partial tiles of both
        rows.append(check_exact_dequantize(fmt, gen))
        rows.append(check_embedding(fmt, gen))
        for m, (n, k) in ((1, (28672, 4096)), (2, (1000, 4096)), (1, (64, 65536))):   # the last: K split
            rows.append(check_gated(fmt, m, n, k, gen))
    for first, second in (("Q4_K", "Q6_K"), ("Q4_K", "Q8_0"), ("Q5_K", "Q6_K"), ("int4_g128", "Q6_K")):
        for m in (1, 2, 4):
            rows.append(check_pair(first, second, m, (5120, 1024), 4096, gen))
    return rows


def _copies(nbytes: int) -> int:
    return max(1, L2_MISS_BYTES // max(nbytes, 1))


def _weights(fmt: str | None, n: int, k: int, gen) -> tuple[list, int]:
    """Enough copies of one random [n, k] weight (dense bf16, or planes) to miss the L2 cache; its bytes."""
    from localllm.kernels.quant_planes_ref import pack_planes

    if fmt is None:
        weight = torch.randn(n, k, device="cuda", generator=gen).to(torch.bfloat16)
        nbytes = weight.nbytes
        return [weight] + [weight.clone() for _ in range(_copies(nbytes) - 1)], nbytes
    planes = {}
    for first in range(0, n, 16384):   # quantized in row chunks: the float32 draft of an LM head is 2 GB
        rows = min(16384, n - first)
        chunk = pack_planes(_random_blocks(fmt, rows, k, gen), fmt)
        for name, plane in chunk.items():
            planes.setdefault(name, []).append(plane)
    planes = {name: torch.cat(parts) for name, parts in planes.items()}
    nbytes = sum(p.nbytes for p in planes.values())
    return [planes] + [{name: p.clone() for name, p in planes.items()} for _ in range(_copies(nbytes) - 1)], nbytes


def _time(call, weights: list) -> float:
    return graph_time_us(lambda: [call(w) for w in weights]) / len(weights)


def _row(fmt: str, name: str, m: int, n: int, k: int, us: float, nbytes: int, **extra) -> dict:
    row = {"format": fmt, "matrix": name, "m": m, "n": n, "k": k, "us": us, "weight_bytes": nbytes,
           "weight_gb_s": nbytes / us / 1e3, "roofline_pct": 100 * nbytes / us / 1e6 / COPY_TB_S,
           "tflop_s": 2 * m * n * k / us / 1e6, **extra}
    print(f"{fmt:<14} {name:<8} M={m:<5} {us:9.1f} us  {row['weight_gb_s']:8.1f} GB/s "
          f"{row['roofline_pct']:5.1f}%  {row['tflop_s']:7.1f} TFLOP/s {extra or ''}", flush=True)
    return row


def time_shape(fmt: str | None, name: str, n: int, k: int, gen, ms=(1, 8, 1024)) -> list[dict]:
    """One matrix: GPU microseconds per call at each M, and what they make (weight GB/s and % of the copy
    roofline; TFLOP/s); for a quantized format also the dequantize kernel alone (the large-M path's first half)."""
    from localllm.kernels.quant_matmul import dequantize_rows, quant_matmul

    weights, nbytes = _weights(fmt, n, k, gen)
    rows = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
        if fmt is None:
            us = _time(lambda w: torch.matmul(x, w.t()), weights)
        else:
            us = _time(lambda w: quant_matmul(x, w, fmt), weights)
        rows.append(_row(fmt or "bf16", name, m, n, k, us, nbytes))
    if fmt is not None:
        chunk = min(n, (1 << 27) // k)
        out = torch.empty(chunk, k, device="cuda", dtype=torch.bfloat16)
        us = _time(lambda w: dequantize_rows(w, fmt, 0, chunk, out), weights) * n / chunk
        rows.append(_row(fmt, name, 0, n, k, us, nbytes, dequantize_gb_s=(nbytes + 2 * n * k) / us / 1e3))
    del weights
    torch.cuda.empty_cache()
    return rows


def sweep_shape(fmt: str, name: str, n: int, k: int, gen) -> dict:
    """The GEMV at one row of x under each of SWEEP_TILES (split K as gemv_config decides for the tile)."""
    from localllm.kernels.quant_matmul import quant_matmul

    weights, nbytes = _weights(fmt, n, k, gen)
    x = torch.randn(1, k, device="cuda", generator=gen).to(torch.bfloat16)
    results = []
    for tiles in SWEEP_TILES:
        us = _time(lambda w: quant_matmul(x, w, fmt, tiles=tiles, path="gemv"), weights)
        results.append((us, tiles))
    us, best = min(results, key=lambda r: r[0])
    print(f"sweep {fmt:<14} {name:<8} best {best} {us:8.1f} us {100 * nbytes / us / 1e6 / COPY_TB_S:5.1f}% "
          f"(worst {max(r[0] for r in results):.1f} us)", flush=True)
    del weights
    torch.cuda.empty_cache()
    return {"format": fmt, "matrix": name, "n": n, "k": k, "weight_bytes": nbytes,
            "results": [{"us": us, **tiles} for us, tiles in results]}


def compare_paths(fmt: str, name: str, n: int, k: int, gen) -> list[dict]:
    """Each path of quant_matmul (GEMV up to its GEMV_MAX_ROWS, tensor-core dot kernel, dequantize + cuBLAS, and for
    FP8 the FP8 tensor cores) at each of PATH_ROWS rows of x (FP8 also at FP8_PATH_ROWS), and the dot kernel's
    tiles of DOT_SWEEP_TILES at 8 rows: where the defaults should switch."""
    from localllm.kernels.quant_matmul import GEMV_MAX_ROWS, quant_matmul

    weights, nbytes = _weights(fmt, n, k, gen)
    rows = []
    for m in PATH_ROWS + (FP8_PATH_ROWS if fmt == FP8 else ()):
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
        for path in ("gemv", "dot", "dense", "fp8"):
            if (path == "gemv" and m > GEMV_MAX_ROWS) or (path == "fp8" and fmt != FP8):
                continue
            us = _time(lambda w: quant_matmul(x, w, fmt, path=path), weights)
            rows.append(_row(fmt, name, m, n, k, us, nbytes, path=path))
        if m == 8:
            for tiles in DOT_SWEEP_TILES:
                us = _time(lambda w: quant_matmul(x, w, fmt, tiles=tiles, path="dot"), weights)
                rows.append(_row(fmt, name, m, n, k, us, nbytes, path="dot", tiles=tiles))
    del weights
    torch.cuda.empty_cache()
    return rows


def bench(gen, formats: list[str]) -> list[dict]:
    rows = []
    for fmt in (None, *formats):
        for name, n, k in SHAPES:
            rows += time_shape(fmt, name, n, k, gen)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-bench", action="store_true", help="correctness checks only")
    parser.add_argument("--no-sweep", action="store_true", help="no GEMV tile sweep")
    parser.add_argument("--all-formats", action="store_true", help="time every format, not BENCH_FORMATS")
    parser.add_argument("--formats", default=None, help="comma-separated formats to time (and sweep) instead")
    parser.add_argument("--paths", action="store_true", help="only check, then time each path by rows of x")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    if not open_gpu():
        return 1
    import triton

    start = time.time()
    gen = torch.Generator(device="cuda").manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "checks": check_all(gen)}
    if args.paths:
        chosen = args.formats.split(",") if args.formats else BENCH_FORMATS
        report["paths"] = [row for fmt in chosen for name, n, k in SHAPES if name in ("gate_up", "down")
                           for row in compare_paths(fmt, name, n, k, gen)]
    elif not args.no_bench:
        chosen = args.formats.split(",") if args.formats else FORMATS if args.all_formats else BENCH_FORMATS
        report["timings"] = bench(gen, chosen)
    if not args.no_bench and not args.no_sweep and not args.paths:
        swept = [f for f in SWEEP_FORMATS if not args.formats or f in args.formats.split(",")]
        report["sweep"] = [sweep_shape(fmt, name, n, k, gen) for fmt in swept for name, n, k in SHAPES]
    report["seconds"] = time.time() - start
    report["failures"] = failures
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print("FAILED: " + ", ".join(failures) if failures else "ALL PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
