"""torch._scaled_mm (1x128 block scales on both sides, and row-wise) against bf16 cuBLAS at Llama-3.1-8B's
gate_up and down shapes: 20 launches timed by CUDA events after one warm-up call."""
import torch
import torch.nn.functional as F
print("torch", torch.__version__, "cuda", torch.version.cuda, "cublas", torch.backends.cuda.preferred_blas_library() if hasattr(torch.backends.cuda,'preferred_blas_library') else '')
dev = "cuda"
def bench(fn, n=20):
    fn(); torch.cuda.synchronize()
    t = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    t[0].record()
    for _ in range(n): fn()
    t[1].record(); torch.cuda.synchronize()
    return t[0].elapsed_time(t[1]) / n * 1e3
for (M, N, K) in [(1024, 28672, 4096), (1024, 4096, 14336), (4096, 28672, 4096), (128, 28672, 4096)]:
    a = torch.randn(M, K, device=dev).to(torch.float8_e4m3fn)
    w = torch.randn(N, K, device=dev).to(torch.float8_e4m3fn)
    sa = torch.rand(K // 128, M, device=dev).t()          # (M, K/128) stride (1, M)
    sb = torch.rand(K // 128, N, device=dev)              # scale_b (K/128, N) row-major: scale_b.t() (N, K/128) stride (1, N)
    ab = torch.randn(M, K, device=dev, dtype=torch.bfloat16); wb = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
    flop = 2 * M * N * K
    us = bench(lambda: ab @ wb.t()); print(f"M={M} N={N} K={K} bf16 cuBLAS {us:8.1f} us {flop/us/1e6:7.1f} TFLOP/s")
    try:
        from torch.nn.functional import ScalingType
        fn = lambda: F.scaled_mm(a, w.t(), sa, ScalingType.Blockwise_1x128, sb, ScalingType.Blockwise_1x128, output_dtype=torch.bfloat16)
        y = fn()
        ref = ((a.float().reshape(M, -1, 128) * sa[..., None]).reshape(M, K)) @ ((w.float().reshape(N, -1, 128) * sb.t()[..., None]).reshape(N, K)).t()
        err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
        us = bench(fn); print(f"   F.scaled_mm 1x128x1x128 {us:8.1f} us {flop/us/1e6:7.1f} TFLOP/s err {err:.2e}")
    except Exception as e:
        print("   F.scaled_mm 1x128 failed:", repr(e)[:300])
    try:
        fn = lambda: torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
        y = fn()
        us = bench(fn); print(f"   torch._scaled_mm blockwise {us:8.1f} us {flop/us/1e6:7.1f} TFLOP/s")
    except Exception as e:
        print("   torch._scaled_mm blockwise failed:", repr(e)[:300])
    try:
        ra = torch.rand(M, 1, device=dev); rb = torch.rand(1, N, device=dev)
        fn = lambda: torch._scaled_mm(a, w.t(), scale_a=ra, scale_b=rb, out_dtype=torch.bfloat16)
        us = bench(fn); print(f"   torch._scaled_mm rowwise {us:8.1f} us {flop/us/1e6:7.1f} TFLOP/s")
    except Exception as e:
        print("   rowwise failed:", repr(e)[:300])
