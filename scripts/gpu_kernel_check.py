#!/usr/bin/env python3
"""GPU check of localllm.kernels: every Triton kernel against its plain-torch reference on realistic bf16 shapes
(and over an fp8 KV cache), then timings of paged attention (decode and prefill, decode over an fp8 cache too) with
triton.testing.do_bench.

Needs a CUDA GPU, torch and triton. localllm.kernels comes from the install if there is one
(`python3 -m pip install --no-deps --no-build-isolation -e .`: use the pip of the python that has torch; without
network, no build isolation), else straight from this checkout. Run from the repo root:
    python3 scripts/gpu_kernel_check.py            # checks + timings, about a minute on an H100
    python3 scripts/gpu_kernel_check.py --no-bench # checks only
    python3 scripts/gpu_kernel_check.py --tune     # also time forced split-K and one-pass decode at each shape
Prints the max abs error of each case with PASS/FAIL, then a timing table; exits 1 if any case FAILs.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from gpu_common import MODELS, DTYPE, make_cache, open_gpu, rope_inputs
from gpu_kernel_timings import bench


failures: list[str] = []


def report(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> None:
    got, want = got.float(), want.float()
    finite = bool(torch.isfinite(got).all())
    err = (got - want).abs()
    max_err = float(err.max()) if err.numel() else 0.0
    ok = finite and bool((err <= atol + rtol * want.abs()).all())
    rel = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-30))
    print(f"{'PASS' if ok else 'FAIL'}  {name:<62} max_abs_err={max_err:.3e}  rel_l2={rel:.2e}"
          + ("" if finite else "  (non-finite output)"), flush=True)
    if not ok:
        failures.append(name)


def attention_case(pa, ref, model: str, q_lens: list[int], ctx_lens: list[int], gen, window=None, label="",
                   split_kv=None, index_dtype=torch.int32, max_context_len=None, kv_dtype=DTYPE):
    """kv_dtype: the cache's (float8_e4m3fn: an fp8 KV cache, against the reference over its decoded values)."""
    num_heads, num_kv_heads, head_dim = MODELS[model]
    k_cache, v_cache, tables = make_cache(ctx_lens, num_kv_heads, head_dim, gen)
    k_cache, v_cache = k_cache.to(kv_dtype), v_cache.to(kv_dtype)
    tables = tables.to(index_dtype)
    qsl = torch.zeros(len(q_lens) + 1, dtype=index_dtype, device="cuda")
    qsl[1:] = torch.tensor(q_lens, device="cuda").cumsum(0)
    ctx = torch.tensor(ctx_lens, dtype=index_dtype, device="cuda")
    q = torch.randn(int(sum(q_lens)), num_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    pa.paged_attention(q, k_cache, v_cache, tables, qsl, ctx, scale, window, out=out, max_query_len=max(q_lens),
                       max_context_len=max_context_len or max(ctx_lens), split_kv=split_kv)
    torch.cuda.synchronize()
    want = ref.paged_attention_varlen(q.float(), k_cache.float(), v_cache.float(), tables, qsl.tolist(), ctx_lens,
                                      scale, window)
    path = {None: "auto", True: "split-K", False: "one-pass"}[split_kv]
    if split_kv is None and max(q_lens) == 1:
        from localllm.kernels.paged_attention_split import use_split_kv
        path += "=split-K" if use_split_kv(1, max(ctx_lens)) else "=one-pass"
    report(f"attn {model} {label} [{path}]" + (f" window={window}" if window else "")
           + ("" if kv_dtype == DTYPE else " fp8 KV"), out, want, 2e-2, 2e-2)


def rope_store_case(rope_store, model: str, num_tokens: int, with_norm: bool, gen) -> None:
    from localllm.kernels.rope_store_ref import norm_rope_store_ref

    q, k, v, cos, sin, pos, slots, caches, (qw, kw) = rope_inputs(model, num_tokens, gen)
    qw, kw = (qw, kw) if with_norm else (None, None)
    want_caches = caches.clone()
    want_q = norm_rope_store_ref(pos, q.clone(), k, v, cos, sin, want_caches[0], want_caches[1], slots, qw, kw)
    rope_store.norm_rope_store(pos, q, k, v, cos, sin, caches[0], caches[1], slots, qw, kw)
    torch.cuda.synchronize()
    name = f"norm_rope_store {model} T={num_tokens}" + (" +q/k norm" if with_norm else "")
    report(f"{name} (q)", q, want_q, 1e-2, 1e-2)
    report(f"{name} (k cache)", caches[0], want_caches[0], 1e-2, 1e-2)
    report(f"{name} (v cache, exact)", caches[1], want_caches[1], 0.0, 0.0)


def check_all(gen) -> None:
    from localllm.kernels import rope_store

    # q/k norm (Qwen3) + rotary + K/V store in one launch: prefill- and decode-sized steps, some padded (-1) slots
    for model in MODELS:
        for num_tokens in (2048, 1):
            for with_norm in (False, True):
                rope_store_case(rope_store, model, num_tokens, with_norm, gen)
    check_norms_and_activation(gen)
    check_attention(gen)
    check_fp8_kv_cache(gen)


def check_fp8_kv_cache(gen) -> None:
    """kv_cache_dtype="fp8": the store rounds as torch does (clamped to +-448) over every finite bf16 value, the
    fused store's K within an e4m3 step of the reference's and its V exact, and attention over the decoded cache."""
    from localllm.kernels import paged_attention as pa, paged_attention_ref as ref, rope_store
    from localllm.kernels.rope_store_ref import norm_rope_store_ref

    fp8 = torch.float8_e4m3fn
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).cuda()
    v = values[values.isfinite()].view(-1, 2, 128)   # 65,280 values
    zeros = torch.zeros_like(v)
    cos = sin = torch.zeros(1, 128, device="cuda")
    k_cache, v_cache = torch.zeros(2, v.shape[0], 1, 2, 128, dtype=fp8, device="cuda").unbind(0)
    rope_store.norm_rope_store(torch.zeros(v.shape[0], dtype=torch.int64, device="cuda"), zeros.clone(), zeros, v,
                               cos, sin, k_cache, v_cache, torch.arange(v.shape[0], dtype=torch.int32, device="cuda"))
    want = v.float().clamp(-448, 448).to(fp8)
    mismatches = (v_cache.view(torch.uint8).flatten() != want.view(torch.uint8).flatten()).sum()
    report("fp8 store of every finite bf16 value (bytes differing)", mismatches.float(), torch.zeros(()), 0, 0)
    q, k, v, cos, sin, pos, slots, caches, (qw, kw) = rope_inputs("qwen3-0.6b", 2048, gen)
    caches = caches.to(fp8)
    want_caches = caches.clone()
    norm_rope_store_ref(pos, q.clone(), k, v, cos, sin, want_caches[0], want_caches[1], slots, qw, kw)
    rope_store.norm_rope_store(pos, q, k, v, cos, sin, caches[0], caches[1], slots, qw, kw)
    torch.cuda.synchronize()
    # the bf16 check's tolerance (the rotation's last bits) plus one e4m3 step
    report("norm_rope_store qwen3-0.6b T=2048 +q/k norm fp8 KV (k cache)", caches[0], want_caches[0], 1e-2,
           0.125 + 1e-2)
    report("norm_rope_store qwen3-0.6b T=2048 +q/k norm fp8 KV (v cache, exact)", caches[1], want_caches[1], 0, 0)
    lens = torch.randint(1, 4097, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    for split in (None, False, True):
        attention_case(pa, ref, "llama3.1-8b", [1] * 64, lens, gen, label="decode B=64 ctx<=4096", split_kv=split,
                       kv_dtype=fp8)
    attention_case(pa, ref, "qwen3-0.6b", [1] * 30 + [777, 300], lens[:30] + [777, 1000], gen,
                   label="mixed 30 decodes + 2 prefills", kv_dtype=fp8)


def check_norms_and_activation(gen) -> None:
    from localllm.kernels import activation, rmsnorm
    from localllm.kernels.activation_ref import silu_and_mul_ref
    from localllm.kernels.rmsnorm_ref import rms_norm_ref

    # rmsnorm (hidden 4096 / 1024 / 2048), with and without residual; the reference does the layer's arithmetic
    for hidden in (4096, 1024, 2048):
        x = torch.randn(1024, hidden, device="cuda", dtype=DTYPE, generator=gen)
        res = torch.randn(1024, hidden, device="cuda", dtype=DTYPE, generator=gen)
        w = (torch.rand(hidden, device="cuda", generator=gen) + 0.5).to(DTYPE)
        report(f"rms_norm hidden={hidden}", rmsnorm.rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5),
               1e-2, 1e-2)
        got_n, got_r = rmsnorm.rms_norm(x, w, 1e-5, res)
        want_n, want_r = rms_norm_ref(x, w, 1e-5, res)
        report(f"rms_norm+residual hidden={hidden} (normed)", got_n, want_n, 1e-2, 1e-2)
        report(f"rms_norm+residual hidden={hidden} (residual, exact)", got_r, want_r, 0.0, 0.0)
    # per-head q/k norm (Qwen3): [T, H, 128] over the last dim
    x = torch.randn(512, 16, 128, device="cuda", dtype=DTYPE, generator=gen)
    w = (torch.rand(128, device="cuda", generator=gen) + 0.5).to(DTYPE)
    report("rms_norm per-head [512,16,128]", rmsnorm.rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6),
           1e-2, 1e-2)

    # silu_and_mul: Llama-8B / 1B intermediate sizes
    for inter in (14336, 8192, 3072):
        x = torch.randn(512, 2 * inter, device="cuda", dtype=DTYPE, generator=gen)
        report(f"silu_and_mul I={inter}", activation.silu_and_mul(x), silu_and_mul_ref(x.float()),
               1e-2, 1e-2)


def check_attention(gen) -> None:
    from localllm.kernels import paged_attention as pa, paged_attention_ref as ref

    for model in MODELS:
        attention_case(pa, ref, model, [1], [4096], gen, label="decode B=1 ctx=4096")
        attention_case(pa, ref, model, [1], [4096], gen, label="decode B=1 ctx=4096", split_kv=False)
        lens = torch.randint(1, 4097, (64,), generator=torch.Generator().manual_seed(1)).tolist()
        attention_case(pa, ref, model, [1] * 64, lens, gen, label="decode B=64 ctx<=4096")
        attention_case(pa, ref, model, [1] * 64, lens, gen, label="decode B=64 ctx<=4096", split_kv=False)
        lens = torch.randint(1, 1025, (256,), generator=torch.Generator().manual_seed(2)).tolist()
        lens[0] = 1
        attention_case(pa, ref, model, [1] * 256, lens, gen, label="decode B=256 ctx<=1024")
        attention_case(pa, ref, model, [1] * 256, lens, gen, label="decode B=256 ctx<=1024", split_kv=True)
        attention_case(pa, ref, model, [1] * 16, lens[:16], gen, label="decode B=16 ctx<=1024")
        attention_case(pa, ref, model, [1] * 256, [300] * 256, gen, label="decode B=256 ctx=300")
        attention_case(pa, ref, model, [1024], [1024], gen, label="prefill 1x1024")
        # 30 decodes, a fresh prefill, a prefill after a cached prefix, a later chunk of a chunked prefill
        q_lens = [1] * 30 + [777, 300, 512]
        ctx_lens = torch.randint(2, 3000, (30,), generator=torch.Generator().manual_seed(3)).tolist() + \
            [777, 1000, 2048]
        attention_case(pa, ref, model, q_lens, ctx_lens, gen, label="mixed 30 decodes + 3 prefills")
    attention_case(pa, ref, "llama3.1-8b", [1] * 8, [4096, 100, 1500, 4000, 9, 2047, 3333, 1024], gen,
                   window=1024, label="decode B=8 ctx<=4096")
    attention_case(pa, ref, "llama3.1-8b", [1] * 8, [4096, 100, 1500, 4000, 9, 2047, 3333, 1024], gen,
                   window=1024, label="decode B=8 ctx<=4096", split_kv=False)
    attention_case(pa, ref, "llama3.1-8b", [1, 1, 1500, 200], [4096, 30, 1500, 2200], gen, window=512,
                   label="mixed window")
    attention_case(pa, ref, "qwen3-0.6b", [1, 1, 1500, 200], [4096, 30, 1500, 2200], gen, label="mixed int64 meta",
                   index_dtype=torch.int64)
    attention_case(pa, ref, "qwen3-0.6b", [1] * 4, [4096, 30, 1500, 2200], gen, label="decode int64 meta",
                   index_dtype=torch.int64)
    # a CUDA graph's bound (the whole model context) over short contexts and padding rows (context 0)
    attention_case(pa, ref, "llama3.1-8b", [1] * 6, [0, 1, 64, 65, 200, 5000], gen, split_kv=True,
                   max_context_len=131072, label="decode B=6 ctx<=5000 under a 131072 bound")
    for split in (None, False, True):   # sequences without a query row (q_len 0) are skipped
        attention_case(pa, ref, "llama3.2-1b", [1, 0, 1, 0], [2000, 300, 45, 7], gen, label="decode with q_len 0",
                       split_kv=split)
    attention_case(pa, ref, "llama3.2-1b", [0, 100, 0, 1], [2000, 300, 45, 7], gen, label="mixed with q_len 0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-bench", action="store_true", help="correctness checks only")
    parser.add_argument("--tune", action="store_true", help="also time forced split-K and one-pass decode")
    args = parser.parse_args()
    if not open_gpu():
        return 1
    t0 = time.time()
    gen = torch.Generator(device="cuda").manual_seed(0)
    check_all(gen)
    print(f"checks took {time.time() - t0:.1f} s; {len(failures)} FAIL", flush=True)
    if not args.no_bench:
        bench(args.tune)
    print(f"total {time.time() - t0:.1f} s")
    if failures:
        print("FAILED: " + ", ".join(failures))
        return 1
    print("ALL PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
