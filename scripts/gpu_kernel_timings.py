"""Timings of localllm.kernels on a GPU (the second half of scripts/gpu_kernel_check.py): paged attention's decode
(one-pass and split-K) and prefill beside torch's SDPA, and the small kernels at a prefill-sized step, each as
triton.testing.do_bench (eager, host included) and as a CUDA-graph replay."""
from __future__ import annotations

import torch

from gpu_common import BLOCK_SIZE, DTYPE, MODELS, graph_time_us, make_cache, rope_inputs


class Timings:
    """The rows of the timing table, printed as they come and again as a summary."""

    def __init__(self):
        self.rows = []

    def row(self, name, eager_us, graph_us, unit_fn) -> None:
        self.rows.append((name, eager_us, graph_us, unit_fn(graph_us)))
        eager = f"{eager_us:9.1f}" if eager_us is not None else f"{'-':>9}"
        print(f"  {name:<46} {eager} {graph_us:9.1f}   {self.rows[-1][3]}", flush=True)

    def summary(self) -> None:
        print(f"\nSummary ({torch.cuda.get_device_name()}, llama3.1-8b geometry, bf16; microseconds):")
        print(f"  {'case':<56} {'eager':>9} {'graph':>9}")
        for name, eager_us, graph_us, extra in self.rows:
            eager = f"{eager_us:9.1f}" if eager_us is not None else f"{'-':>9}"
            print(f"  {name:<56} {eager} {graph_us:9.1f}   {extra}")


def gbps(nbytes):
    return lambda us: f"{nbytes / us / 1e3:6.0f} GB/s"


def bench(tune: bool) -> None:
    num_heads, num_kv_heads, head_dim = MODELS["llama3.1-8b"]
    print(f"\nTimings, llama3.1-8b geometry ({num_heads} q heads, {num_kv_heads} kv heads, head_dim {head_dim}), bf16, "
          f"block size {BLOCK_SIZE}, blocks scattered at random.\n"
          "  eager = triton.testing.do_bench median (L2 flushed; includes the host's launch overhead);\n"
          "  graph = CUDA-graph replay median per call, K/V rotated over enough copies to defeat the L2;\n"
          "  decode bandwidth = K/V bytes read / graph time.", flush=True)
    print(f"  {'case':<46} {'eager us':>9} {'graph us':>9}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(123)
    timings = Timings()
    bench_decode(timings, tune, gen)
    bench_decode(timings, False, gen, kv_dtype=torch.float8_e4m3fn)   # kv_cache_dtype="fp8": half the bytes
    bench_decode_under_a_bound(timings, gen)
    bench_prefill(timings, gen)
    bench_other_kernels(timings, gen)
    timings.summary()


def bench_decode(timings: Timings, tune: bool, gen, kv_dtype: torch.dtype = DTYPE) -> None:
    """kv_dtype: the cache's (float8_e4m3fn: an fp8 KV cache; its rows say so)."""
    from triton.testing import do_bench
    from localllm.kernels import paged_attention as pa
    from localllm.kernels.paged_attention_split import use_split_kv

    num_heads, num_kv_heads, head_dim = MODELS["llama3.1-8b"]
    elem = torch.tensor([], dtype=kv_dtype).element_size()
    label = "" if kv_dtype == DTYPE else " fp8 KV"
    for batch in (1, 64, 256):
        for ctx_len in (1024, 4096):
            kv_bytes = 2 * batch * ctx_len * num_kv_heads * head_dim * elem
            copies = max(1, min(32, -(-200_000_000 // kv_bytes)))
            k_cache, v_cache, tables = make_cache([ctx_len] * (batch * copies), num_kv_heads, head_dim, gen)
            k_cache, v_cache = k_cache.to(kv_dtype), v_cache.to(kv_dtype)
            q = torch.randn(copies, batch, num_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
            qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
            ctx = torch.full((batch,), ctx_len, dtype=torch.int32, device="cuda")
            out = torch.empty(batch, num_heads, head_dim, device="cuda", dtype=DTYPE)
            auto = "split-K" if use_split_kv(1, ctx_len) else "one-pass"
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
                timings.row(f"decode B={batch} ctx={ctx_len}{label} [{name}]", eager,
                            graph_time_us(all_copies) / copies,
                            gbps(kv_bytes))


def bench_decode_under_a_bound(timings: Timings, gen) -> None:
    """Decode inside a CUDA graph: the bound is the model's whole context, the contexts are short."""
    from localllm.kernels import paged_attention as pa

    num_heads, num_kv_heads, head_dim = MODELS["llama3.1-8b"]
    elem = torch.tensor([], dtype=DTYPE).element_size()
    for ctx_len in (200, 1024):
        k_cache, v_cache, tables = make_cache([ctx_len], num_kv_heads, head_dim, gen)
        q = torch.randn(1, num_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
        qsl = torch.arange(2, dtype=torch.int32, device="cuda")
        ctx = torch.full((1,), ctx_len, dtype=torch.int32, device="cuda")
        out = torch.empty_like(q)
        for bound in (ctx_len, 131072):
            fn = lambda bound=bound: pa.paged_attention(q, k_cache, v_cache, tables, qsl, ctx, head_dim ** -0.5,  # noqa
                                                        out=out, max_query_len=1, max_context_len=bound)
            timings.row(f"decode B=1 ctx={ctx_len} bound={bound}", None, graph_time_us(fn),
                        gbps(2 * ctx_len * num_kv_heads * head_dim * elem))


def bench_prefill(timings: Timings, gen) -> None:
    """The paged prefill kernel beside torch's SDPA (flash) over contiguous K/V of the same shape."""
    from triton.testing import do_bench
    from localllm.kernels import paged_attention as pa

    num_heads, num_kv_heads, head_dim = MODELS["llama3.1-8b"]
    for seq_len in (1024, 4096):
        k_cache, v_cache, tables = make_cache([seq_len], num_kv_heads, head_dim, gen)
        q = torch.randn(seq_len, num_heads, head_dim, device="cuda", dtype=DTYPE, generator=gen)
        qsl = torch.tensor([0, seq_len], dtype=torch.int32, device="cuda")
        ctx = torch.tensor([seq_len], dtype=torch.int32, device="cuda")
        out = torch.empty_like(q)
        flops = 4 * num_heads * head_dim * seq_len * seq_len / 2   # causal: half of QK^T and PV

        def tflops(us, flops=flops):
            return f"{flops / us / 1e6:6.0f} TFLOP/s"

        def call():
            pa.paged_attention(q, k_cache, v_cache, tables, qsl, ctx, head_dim ** -0.5, out=out,
                               max_query_len=seq_len, max_context_len=seq_len)
        timings.row(f"prefill 1x{seq_len} (paged)", do_bench(call, return_mode="median") * 1e3, graph_time_us(call),
                    tflops)
        qt = q.transpose(0, 1).unsqueeze(0)
        kt = torch.randn(1, num_heads, seq_len, head_dim, device="cuda", dtype=DTYPE, generator=gen)
        vt = torch.randn_like(kt)

        def sdpa():
            torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        timings.row(f"prefill 1x{seq_len} (torch SDPA, contiguous: baseline)",
                    do_bench(sdpa, return_mode="median") * 1e3, graph_time_us(sdpa), tflops)


def bench_other_kernels(timings: Timings, gen) -> None:
    """The other kernels at a prefill-sized step (2048 tokens), for scale."""
    from triton.testing import do_bench
    from localllm.kernels import activation, rmsnorm, rope_store

    elem = torch.tensor([], dtype=DTYPE).element_size()
    num_tokens, hidden, inter = 2048, 4096, 14336
    x = torch.randn(num_tokens, hidden, device="cuda", dtype=DTYPE, generator=gen)
    res = torch.randn_like(x)
    w = torch.ones(hidden, device="cuda", dtype=DTYPE)
    fn = lambda: rmsnorm.rms_norm(x, w, 1e-5, res)  # noqa: E731
    timings.row(f"rms_norm+residual {num_tokens}x{hidden}", do_bench(fn, return_mode="median") * 1e3,
                graph_time_us(fn), gbps(4 * x.numel() * elem))
    g = torch.randn(num_tokens, 2 * inter, device="cuda", dtype=DTYPE, generator=gen)
    fn = lambda: activation.silu_and_mul(g)  # noqa: E731
    timings.row(f"silu_and_mul {num_tokens}x{inter}", do_bench(fn, return_mode="median") * 1e3, graph_time_us(fn),
                gbps(1.5 * g.numel() * elem))
    for model, tokens in (("llama3.1-8b", num_tokens), ("qwen3-0.6b", num_tokens), ("qwen3-0.6b", 1)):
        q, k, v, cos, sin, pos, slots, caches, (qw, kw) = rope_inputs(model, tokens, gen, 4 * num_tokens)
        norms = (qw, kw) if model.startswith("qwen3") else (None, None)
        fn = lambda: rope_store.norm_rope_store(pos, q, k, v, cos, sin, caches[0], caches[1], slots, *norms)  # noqa
        timings.row(f"norm_rope_store {model} {tokens} tokens", do_bench(fn, return_mode="median") * 1e3,
                    graph_time_us(fn), gbps(2 * (q.numel() + 2 * k.numel()) * elem))
