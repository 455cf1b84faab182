#!/usr/bin/env python3
"""GPU check of localllm.kernels: every Triton kernel against its plain-torch reference on realistic bf16 shapes,
then timings of paged attention (decode and prefill) with triton.testing.do_bench.

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
import importlib.util
import sys
import time
from pathlib import Path

import torch


def open_gpu() -> bool:
    """False (after a FAIL line) without a CUDA device; else imports the kernels and prints the device line."""
    if not torch.cuda.is_available():
        print("FAIL  no CUDA device")
        return False
    import triton

    _import_kernels()
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    return True


def _import_kernels() -> None:
    """localllm.kernels from the install, else straight from this checkout (kernels/ is mapped to
    localllm.kernels only by the package install)."""
    try:
        import localllm.kernels  # noqa: F401
        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import localllm  # noqa: F401  (light: config and sampling params only)
    spec = importlib.util.spec_from_file_location("localllm.kernels", root / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(root / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["localllm.kernels"] = module
    spec.loader.exec_module(module)


MODELS = {   # name: (query heads, kv heads, head_dim)
    "llama3.1-8b": (32, 8, 128),
    "qwen3-0.6b": (16, 8, 128),
    "llama3.2-1b": (32, 8, 64),
}
BLOCK_SIZE = 16
DTYPE = torch.bfloat16
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


def make_cache(ctx_lens: list[int], num_kv_heads: int, head_dim: int, gen: torch.Generator, spare_blocks: int = 8):
    """K/V cache with each sequence's blocks scattered at random; block tables padded with 0 columns."""
    blocks = [-(-c // BLOCK_SIZE) for c in ctx_lens]
    num_blocks = sum(blocks) + spare_blocks
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, num_kv_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
    v_cache = torch.randn(num_blocks, BLOCK_SIZE, num_kv_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
    order = (torch.randperm(num_blocks - 1, device="cuda", generator=gen) + 1).to(torch.int32)
    width = max(blocks) + 1
    tables = torch.zeros(len(ctx_lens), width, dtype=torch.int32, device="cuda")
    offset = 0
    for i, n in enumerate(blocks):
        tables[i, :n] = order[offset:offset + n]
        offset += n
    return k_cache, v_cache, tables


def attention_case(pa, ref, model: str, q_lens: list[int], ctx_lens: list[int], gen, window=None, label="",
                   split_kv=None, index_dtype=torch.int32, max_context_len=None):
    num_heads, num_kv_heads, head_dim = MODELS[model]
    k_cache, v_cache, tables = make_cache(ctx_lens, num_kv_heads, head_dim, gen)
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
        num_sms = torch.cuda.get_device_properties(0).multi_processor_count
        path += "=split-K" if use_split_kv(1, max(ctx_lens), len(ctx_lens), num_kv_heads, num_sms) else "=one-pass"
    report(f"attn {model} {label} [{path}]" + (f" window={window}" if window else ""), out, want, 2e-2, 2e-2)


def rope_inputs(model: str, num_tokens: int, gen, num_blocks: int = 512):
    """q, k, v as views of one fused qkv output, llama3-base cos/sin caches, positions, random slots with every
    97th padded (-1), a K/V cache and per-head norm weights."""
    hq, hkv, d = MODELS[model]
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device="cuda").float() / d))
    emb = torch.outer(torch.arange(8192, device="cuda").float(), inv).repeat(1, 2)
    qkv = torch.randn(num_tokens, (hq + 2 * hkv) * d, device="cuda", dtype=DTYPE, generator=gen)
    q, k, v = (x.view(num_tokens, -1, d) for x in qkv.split([hq * d, hkv * d, hkv * d], -1))
    pos = torch.randint(0, 8192, (num_tokens,), device="cuda", generator=gen)
    slots = torch.randperm(num_blocks * BLOCK_SIZE, device="cuda", generator=gen)[:num_tokens].to(torch.int32)
    slots[1::97] = -1
    caches = torch.randn(2, num_blocks, BLOCK_SIZE, hkv, d, device="cuda", dtype=DTYPE, generator=gen)
    weights = [(torch.rand(d, device="cuda", generator=gen) + 0.5).to(DTYPE) for _ in range(2)]
    return q, k, v, emb.cos(), emb.sin(), pos, slots, caches, weights


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
    from localllm.kernels import activation, paged_attention as pa, paged_attention_ref as ref, rmsnorm, rope_store
    from localllm.kernels.activation_ref import silu_and_mul_ref
    from localllm.kernels.rmsnorm_ref import rms_norm_ref

    # q/k norm (Qwen3) + rotary + K/V store in one launch: prefill- and decode-sized steps, some padded (-1) slots
    for model in MODELS:
        for num_tokens in (2048, 1):
            for with_norm in (False, True):
                rope_store_case(rope_store, model, num_tokens, with_norm, gen)

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

    # paged attention
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


def graph_time_us(fn, reps: int = 20) -> float:
    """Median GPU time of fn replayed from a CUDA graph (no host launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2] * 1e3


def bench(tune: bool) -> None:
    from triton.testing import do_bench
    from localllm.kernels import paged_attention as pa
    from localllm.kernels.paged_attention_split import use_split_kv

    num_heads, num_kv_heads, head_dim = MODELS["llama3.1-8b"]
    gen = torch.Generator(device="cuda").manual_seed(123)
    elem = torch.tensor([], dtype=DTYPE).element_size()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []

    def row(name, eager_us, graph_us, unit_fn):
        rows.append((name, eager_us, graph_us, unit_fn(graph_us)))
        eager = f"{eager_us:9.1f}" if eager_us is not None else f"{'-':>9}"
        print(f"  {name:<46} {eager} {graph_us:9.1f}   {rows[-1][3]}", flush=True)

    print(f"\nTimings, llama3.1-8b geometry ({num_heads} q heads, {num_kv_heads} kv heads, head_dim {head_dim}), bf16, "
          f"block size {BLOCK_SIZE}, blocks scattered at random.\n"
          "  eager = triton.testing.do_bench median (L2 flushed; includes the host's launch overhead);\n"
          "  graph = CUDA-graph replay median per call, K/V rotated over enough copies to defeat the L2;\n"
          "  decode bandwidth = K/V bytes read / graph time.", flush=True)
    print(f"  {'case':<46} {'eager us':>9} {'graph us':>9}", flush=True)
    for batch in (1, 64, 256):
        for ctx_len in (1024, 4096):
            kv_bytes = 2 * batch * ctx_len * num_kv_heads * head_dim * elem
            copies = max(1, min(32, -(-200_000_000 // kv_bytes)))
            k_cache, v_cache, tables = make_cache([ctx_len] * (batch * copies), num_kv_heads, head_dim, gen)
            q = torch.randn(copies, batch, num_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
            qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
            ctx = torch.full((batch,), ctx_len, dtype=torch.int32, device="cuda")
            out = torch.empty(batch, num_heads, head_dim, device="cuda", dtype=DTYPE)
            auto = "split-K" if use_split_kv(1, ctx_len, batch, num_kv_heads, num_sms) else "one-pass"
            variants = [(f"auto={auto}", None)] + ([("one-pass", False), ("split-K", True)] if tune else [])
            for name, split in variants:
                def call(r=0, split=split):
                    pa.paged_attention(q[r], k_cache, v_cache, tables[r * batch:(r + 1) * batch], qsl, ctx,
                                       head_dim ** -0.5, out=out, max_query_len=1, max_context_len=ctx_len,
                                       split_kv=split)

                def all_copies():
                    for r in range(copies):
                        call(r)
                eager = do_bench(call, warmup=25, rep=100, return_mode="median") * 1e3 if split is None else None
                graph = graph_time_us(all_copies) / copies
                row(f"decode B={batch} ctx={ctx_len} [{name}]", eager, graph,
                    lambda us: f"{kv_bytes / us / 1e3:6.0f} GB/s")
            del k_cache, v_cache, tables

    # decode inside a CUDA graph: the bound is the model's whole context, the contexts are short
    for ctx_len in (200, 1024):
        k_cache, v_cache, tables = make_cache([ctx_len], num_kv_heads, head_dim, gen)
        q = torch.randn(1, num_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
        qsl = torch.arange(2, dtype=torch.int32, device="cuda")
        ctx = torch.full((1,), ctx_len, dtype=torch.int32, device="cuda")
        out = torch.empty_like(q)
        for bound in (ctx_len, 131072):
            fn = lambda bound=bound: pa.paged_attention(q, k_cache, v_cache, tables, qsl, ctx, head_dim ** -0.5,  # noqa
                                                        out=out, max_query_len=1, max_context_len=bound)
            row(f"decode B=1 ctx={ctx_len} bound={bound}", None, graph_time_us(fn),
                lambda us: f"{2 * ctx_len * num_kv_heads * head_dim * elem / us / 1e3:6.0f} GB/s")

    for seq_len in (1024, 4096):
        k_cache, v_cache, tables = make_cache([seq_len], num_kv_heads, head_dim, gen)
        q = torch.randn(seq_len, num_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
        qsl = torch.tensor([0, seq_len], dtype=torch.int32, device="cuda")
        ctx = torch.tensor([seq_len], dtype=torch.int32, device="cuda")
        out = torch.empty_like(q)
        flops = 4 * num_heads * head_dim * seq_len * seq_len / 2   # causal: half of QK^T and PV

        def call():
            pa.paged_attention(q, k_cache, v_cache, tables, qsl, ctx, head_dim ** -0.5, out=out,
                               max_query_len=seq_len, max_context_len=seq_len)
        row(f"prefill 1x{seq_len} (paged)", do_bench(call, return_mode="median") * 1e3, graph_time_us(call),
            lambda us: f"{flops / us / 1e6:6.0f} TFLOP/s")
        # baseline: torch SDPA (flash) over contiguous K/V of the same shape
        qt = q.transpose(0, 1).unsqueeze(0)
        kt = torch.randn(1, num_heads, seq_len, head_dim, device="cuda", dtype=DTYPE, generator=gen)
        vt = torch.randn_like(kt)

        def sdpa():
            torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        row(f"prefill 1x{seq_len} (torch SDPA, contiguous: baseline)", do_bench(sdpa, return_mode="median") * 1e3,
            graph_time_us(sdpa), lambda us: f"{flops / us / 1e6:6.0f} TFLOP/s")

    # the other kernels at a prefill-sized step (2048 tokens), for scale
    from localllm.kernels import activation, rmsnorm, rope_store
    num_tokens, hidden, inter = 2048, 4096, 14336
    x = torch.randn(num_tokens, hidden, device="cuda", dtype=DTYPE, generator=gen)
    res = torch.randn_like(x)
    w = torch.ones(hidden, device="cuda", dtype=DTYPE)

    def gbps(nbytes):
        return lambda us: f"{nbytes / us / 1e3:6.0f} GB/s"
    fn = lambda: rmsnorm.rms_norm(x, w, 1e-5, res)  # noqa: E731
    row(f"rms_norm+residual {num_tokens}x{hidden}", do_bench(fn, return_mode="median") * 1e3, graph_time_us(fn),
        gbps(4 * x.numel() * elem))
    g = torch.randn(num_tokens, 2 * inter, device="cuda", dtype=DTYPE, generator=gen)
    fn = lambda: activation.silu_and_mul(g)  # noqa: E731
    row(f"silu_and_mul {num_tokens}x{inter}", do_bench(fn, return_mode="median") * 1e3, graph_time_us(fn),
        gbps(1.5 * g.numel() * elem))
    for model, tokens in (("llama3.1-8b", num_tokens), ("qwen3-0.6b", num_tokens), ("qwen3-0.6b", 1)):
        q, k, v, cos, sin, pos, slots, caches, (qw, kw) = rope_inputs(model, tokens, gen, 4 * num_tokens)
        norms = (qw, kw) if model.startswith("qwen3") else (None, None)
        fn = lambda: rope_store.norm_rope_store(pos, q, k, v, cos, sin, caches[0], caches[1], slots, *norms)  # noqa
        row(f"norm_rope_store {model} {tokens} tokens", do_bench(fn, return_mode="median") * 1e3, graph_time_us(fn),
            gbps(2 * (q.numel() + 2 * k.numel()) * elem))

    print(f"\nSummary ({torch.cuda.get_device_name()}, llama3.1-8b geometry, bf16; microseconds):")
    print(f"  {'case':<56} {'eager':>9} {'graph':>9}")
    for name, eager_us, graph_us, extra in rows:
        eager = f"{eager_us:9.1f}" if eager_us is not None else f"{'-':>9}"
        print(f"  {name:<56} {eager} {graph_us:9.1f}   {extra}")


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
