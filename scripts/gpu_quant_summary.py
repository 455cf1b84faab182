#!/usr/bin/env python3
"""The figures of scripts/gpu_quant.sh's JSON files beside the targets for quantized weights (8B Q4_K_M decode
>= 450 tok/s, Q8_0 >= 330, 1,024-token prefill within 1.5x of bf16, weight memory <= 1.1x the file, greedy
agreement >= 99%, a 32B Q4_K_M in 24 GiB with a 4k-token KV pool): a table on stdout, summary.json beside them.

    python3 scripts/gpu_quant_summary.py OUTDIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

GIB = 1 << 30


def _load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _row(rows: list, what: str, value, target: str = "", ok: bool | None = None) -> None:
    rows.append({"what": what, "value": value, "target": target,
                 "result": "-" if ok is None else ("PASS" if ok else "FAIL")})


def _latency_rows(out: Path, rows: list) -> None:
    bf16 = _load(out, "latency-llama-3.1-8b-none")
    prefill_bf16 = _load(out, "prefill-llama-3.1-8b-none") or bf16
    for quant, decode_target in (("none", None), ("q4_k_m", 450.0), ("q8_0", 330.0), ("int4", None), ("fp8", None)):
        r = _load(out, f"latency-llama-3.1-8b-{quant}")
        if r is None:
            continue
        rate = r["decode_tokens_per_s"]
        _row(rows, f"8B {quant} batch-1 decode tok/s", round(rate, 1),
             f">= {decode_target:.0f}" if decode_target else "", rate >= decode_target if decode_target else None)
        if bf16 and quant != "none":
            _row(rows, f"8B {quant} decode vs bf16", f"{rate / bf16['decode_tokens_per_s']:.2f}x")
        memory = r.get("memory") or {}
        if memory and quant != "none":
            ratio = memory["weight_bytes"] / memory["file_bytes"]
            _row(rows, f"8B {quant} weights {memory['weight_bytes'] / GIB:.2f} GiB / GGUF-equivalent "
                       f"{memory['file_bytes'] / GIB:.2f} GiB", f"{ratio:.3f}", "<= 1.1", ratio <= 1.1)
        prefill = _load(out, f"prefill-llama-3.1-8b-{quant}") or r
        _row(rows, f"8B {quant} prefill 1,024 tokens ms", round(prefill["ttft_ms"], 1))
        if prefill_bf16 and quant == "q4_k_m":
            ratio = prefill["ttft_ms"] / prefill_bf16["ttft_ms"]
            _row(rows, "8B q4_k_m prefill vs bf16", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5)


def _other_rows(out: Path, rows: list) -> None:
    for arch, quant in (("llama-3.1-8b", "none"), ("llama-3.1-8b", "q4_k_m"), ("llama-3.1-8b", "q8_0"),
                        ("qwen3-8b", "none"), ("qwen3-8b", "fp8")):
        r = _load(out, f"throughput-{arch}-{quant}")
        if r is not None:
            _row(rows, f"{arch} {quant} nano-vllm output tok/s", round(r["output_tokens_per_s"], 1))
    for quant in ("none", "fp8"):
        r = _load(out, f"latency-qwen3-8b-{quant}")
        if r is not None:
            _row(rows, f"qwen3-8b {quant} batch-1 decode tok/s", round(r["decode_tokens_per_s"], 1))
    fit = _load(out, "fit-qwen2.5-32b-q4_k_m")
    if fit is not None:
        memory = fit["memory"]
        peak = memory["peak_reserved_bytes"]
        _row(rows, f"32B Q4_K_M weights {memory['weight_bytes'] / GIB:.2f} GiB + 4k-token KV: peak reserved GiB",
             round(peak / GIB, 2), "<= 24 (less the CUDA context)", peak <= 24 * GIB)
        _row(rows, "32B Q4_K_M batch-1 decode tok/s", round(fit["decode_tokens_per_s"], 1))
    for path in sorted(out.glob("agreement-*.json")):
        r = json.loads(path.read_text())
        _row(rows, f"agreement {path.stem.removeprefix('agreement-')} ({r.get('weights')}, {r['total']} tokens)",
             f"{r['agreement']:.2%}", ">= 99%", r["agreement"] >= 0.99)
    kernels = _load(out, "quant-kernels")
    if kernels is not None:
        _row(rows, "kernel checks failed", len(kernels["failures"]), "0", not kernels["failures"])
        for t in kernels.get("timings", []):   # the GEMV's share of the copy roofline; prefill-sized matmuls
            if t["matrix"] == "gate_up" and t["m"] == 1 and t["format"] != "bf16":
                _row(rows, f"GEMV {t['format']} gate_up M=1: % of copy bandwidth", round(t["roofline_pct"], 1))
            if t["matrix"] == "gate_up" and t["m"] == 1024:
                _row(rows, f"matmul {t['format']} gate_up M=1024 TFLOP/s", round(t["tflop_s"], 1))


def main() -> int:
    out = Path(sys.argv[1])
    rows: list[dict] = []
    _latency_rows(out, rows)
    _other_rows(out, rows)
    width = max((len(r["what"]) for r in rows), default=10)
    for r in rows:
        print(f"{r['what']:<{width}}  {str(r['value']):>10}  {r['target']:>14}  {r['result']}")
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
