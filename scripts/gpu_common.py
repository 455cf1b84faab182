"""What the GPU check scripts share: opening the GPU (localllm.kernels from the install or this checkout), CUDA-graph
timing, and the attention geometries, caches and rotary inputs the kernel checks and timings are run on."""
from __future__ import annotations

import importlib.util
import sys
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
