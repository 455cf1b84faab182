"""The fused GPU kernels compile for a Hopper GPU (sm_90), without one: Triton's compiler runs on the CPU, and it
checks what its interpreter (tests/test_fused_kernels.py) lets pass, such as the types of both branches of an if."""
from __future__ import annotations

import re

import pytest

triton = pytest.importorskip("triton")

from triton_interpreter import IN_PROCESS  # noqa: E402

pytestmark = pytest.mark.skipif(IN_PROCESS, reason="Triton interprets in this process: nothing to compile")


def _compile(fn, constexprs: dict, pointers: dict, floats=(), num_warps=4) -> str:
    """PTX of fn for sm_90; pointer arguments are bf16 unless `pointers` says otherwise, other scalars int32."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*bf16")
        else:
            signature[name] = "fp32" if name in floats else "i32"
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    try:
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    except RuntimeError as e:   # a Triton without its CUDA backend's tools (ptxas)
        if "ptxas" in str(e):
            pytest.skip(f"this Triton cannot compile for CUDA here: {e}")
        raise
    return kernel.asm["ptx"]


@pytest.mark.parametrize("has_norm", [False, True])
@pytest.mark.parametrize("dtype", ["*bf16", "*fp32"])
def test_norm_rope_store_compiles(has_norm, dtype):
    from localllm.kernels.rope_store import _rope_store_kernel

    pointers = {n: dtype for n in ("q_ptr", "k_ptr", "v_ptr", "qw_ptr", "kw_ptr", "k_cache_ptr", "v_cache_ptr")}
    pointers.update(pos_ptr="*i64", slot_ptr="*i32", cos_ptr="*fp32", sin_ptr="*fp32")
    ptx = _compile(_rope_store_kernel, dict(HALF=64, BLOCK_HALF=64, BLOCK_HQ=16, BLOCK_HKV=8, BLOCK_SIZE=16,
                                            HAS_NORM=has_norm, USE_PDL=True, KV_FP8=False, FP8_HW=False),
                   pointers, floats=("eps",))
    assert ".entry _rope_store_kernel" in ptx


@pytest.mark.parametrize("has_norm", [False, True])
def test_norm_rope_store_into_an_fp8_cache_compiles_to_the_saturating_conversion(has_norm):
    """An fp8 KV cache on the GPU: K and V go to e4m3 by the hardware's round-to-nearest-even conversion (which
    also saturates), not by the interpreter's bit-by-bit encoding."""
    from localllm.kernels.rope_store import _rope_store_kernel

    pointers = {n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "qw_ptr", "kw_ptr")}
    pointers.update(pos_ptr="*i64", slot_ptr="*i32", cos_ptr="*fp32", sin_ptr="*fp32", k_cache_ptr="*fp8e4nv",
                    v_cache_ptr="*fp8e4nv")
    ptx = _compile(_rope_store_kernel, dict(HALF=64, BLOCK_HALF=64, BLOCK_HQ=16, BLOCK_HKV=8, BLOCK_SIZE=16,
                                            HAS_NORM=has_norm, USE_PDL=True, KV_FP8=True, FP8_HW=True),
                   pointers, floats=("eps",))
    assert "cvt.rn.satfinite.e4m3x2.f32" in ptx


@pytest.mark.parametrize("kv", ["*bf16", "*fp8e4nv"])
@pytest.mark.parametrize("decode", [False, True])
def test_one_pass_attention_compiles(kv, decode):
    """The one-pass kernel (prefills, short decodes) at the GPU's tiles, over a bf16 and an fp8 cache (decoded
    by the hardware's e4m3 conversion)."""
    from localllm.kernels.paged_attention import _paged_attn_kernel

    pointers = {n: "*i32" for n in ("bt_ptr", "qsl_ptr", "ctx_ptr")}
    pointers.update(k_cache_ptr=kv, v_cache_ptr=kv)
    tiles = dict(BLOCK_Q=1, BLOCK_M=16, BLOCK_N=128) if decode else dict(BLOCK_Q=16, BLOCK_M=64, BLOCK_N=64)
    ptx = _compile(_paged_attn_kernel, dict(HEAD_DIM=128, BLOCK_D=128, GROUP=4, BLOCK_SIZE=16, SLIDING=False,
                                            IS_DECODE=decode, K_ROWS=True, DOT_PRECISION="tf32", **tiles),
                   pointers, floats=("scale_log2",))
    assert ".entry _paged_attn_kernel" in ptx
    assert ("cvt.rn.f16x2.e4m3x2" in ptx) == (kv == "*fp8e4nv")


@pytest.mark.parametrize("sliding,kv", [(False, "*bf16"), (True, "*bf16"), (False, "*fp8e4nv")])
def test_split_k_decode_compiles(sliding, kv):
    from localllm.kernels import paged_attention_split as split

    pointers = {n: "*i32" for n in ("bt_ptr", "qsl_ptr", "ctx_ptr", "arrivals_ptr")}
    pointers.update(k_cache_ptr=kv, v_cache_ptr=kv)
    pointers.update({n: "*fp32" for n in ("part_acc_ptr", "part_m_ptr", "part_l_ptr")})
    ptx = _compile(split._decode_split_kernel, dict(HEAD_DIM=128, BLOCK_D=128, GROUP=4, BLOCK_G=4, BLOCK_M=16,
                                                    BLOCK_N=64, BLOCK_SIZE=16, MIN_PARTITION=64, SLIDING=sliding,
                                                    K_ROWS=True, DOT_PRECISION="tf32"), pointers,
                   floats=("scale_log2",))
    assert ".entry _decode_split_kernel" in ptx
    assert re.search(r"atom\.global\.[\w.]*acq_rel[\w.]*\.add", ptx)   # the arrival count, ordered after the partials


@pytest.mark.parametrize("prologue,residual,block_n,block_k",
                         [(0, False, 4, 1024), (1, False, 4, 1024), (2, True, 4, 1024), (0, False, 8, 1024),
                          (2, True, 8, 512), (0, True, 4, 512)])
def test_decode_gemv_compiles_as_a_dependent_launch_without_spills(prologue, residual, block_n, block_k):
    """One token row: the RMSNorm or SiLU-and-mul prologue, the residual epilogue, and the dependent-launch wait
    (griddepcontrol) after the first weight tile's load, at the tiles the engine uses."""
    from localllm.kernels.gemv import _gemv_kernel

    ptx = _compile(_gemv_kernel, dict(PROLOGUE=prologue, HAS_BIAS=True, HAS_RESIDUAL=residual, BLOCK_M=1,
                                      BLOCK_N=block_n, BLOCK_K=block_k, USE_PDL=True, PUSH=False, RANK=0, WORLD=1),
                   {}, floats=("eps",))
    assert "griddepcontrol.wait" in ptx and "griddepcontrol.launch_dependents" in ptx
    assert "ld.local" not in ptx and "st.local" not in ptx


@pytest.mark.parametrize("dtype", ["*bf16", "*fp32"])
def test_sample_kernel_compiles_without_spills(dtype):
    from localllm.kernels import sample

    pointers = {"logits_ptr": dtype, "temperature_ptr": "*fp32", "uniform_ptr": "*fp32", "out_ptr": "*i64"}
    ptx = _compile(sample._sample_kernel, dict(BLOCK=sample.BLOCK), pointers, num_warps=8)
    assert ".entry _sample_kernel" in ptx and "ld.local" not in ptx and "st.local" not in ptx


@pytest.mark.parametrize("block_n,block_k", [(4, 1024), (8, 512)])
def test_pushing_gemv_compiles_to_a_system_fence_before_its_flags(block_n, block_k):
    """The row-parallel GEMV of a one-token step pushing to the peers (kernels/peer_sum.py): each program orders its
    stores before its flags with a system-scope fence, then sets its flag on every rank, a thread a rank (another
    GPU reads them)."""
    from localllm.kernels.gemv import _gemv_kernel

    pointers = {"y_ptr": "*fp32", "flags_ptr": "*i32", "deltas_ptr": "*i64"}
    ptx = _compile(_gemv_kernel, dict(PROLOGUE=2, HAS_BIAS=False, HAS_RESIDUAL=True, BLOCK_M=1, BLOCK_N=block_n,
                                      BLOCK_K=block_k, USE_PDL=True, PUSH=True, RANK=1, WORLD=2, ON_GPU=True),
                   pointers, floats=("eps",))
    flag = "atom.global.sys.relaxed.exch.b32"
    assert ptx.count(flag) == 1 and ptx.index("bar.sync") < ptx.index("fence.acq_rel.sys") < ptx.index(flag)
    assert "atom.global.sys.acq_rel" not in ptx
    assert "ld.local" not in ptx and "st.local" not in ptx


def test_pulling_norm_compiles_to_acquire_polls_and_a_timeout():
    """The RMSNorm that adds up the ranks' partial sums polls the flags with system-scope acquire reads, and traps
    past its timeout (read from the GPU's global timer) rather than wait forever for a dead rank."""
    from localllm.kernels.rmsnorm import _pulled_rms_norm_kernel

    pointers = {"slots_ptr": "*fp32", "flags_ptr": "*i32", "abandon_ptr": "*i32"}
    ptx = _compile(_pulled_rms_norm_kernel, dict(RANK=0, WORLD=2, ON_GPU=True, BLOCK_P=1024, BLOCK=4096,
                                                 USE_PDL=True), pointers, floats=("eps",), num_warps=16)
    assert "atom.global.sys.acquire.add.u32" in ptx and "ld.volatile.global.b32" in ptx   # flags; the abandon word
    assert "fence" not in ptx and "globaltimer" in ptx and "trap;" in ptx


@pytest.mark.parametrize("kernel", ["rms_norm", "silu_and_mul"])
def test_decode_step_small_kernels_compile_as_dependent_launches(kernel):
    """RMSNorm and SiLU-and-mul wait for the kernel before them (griddepcontrol.wait) before they read its output,
    and then let the next one start (launch_dependents); RMSNorm reads its weight before the wait."""
    from localllm.kernels import activation, rmsnorm

    if kernel == "rms_norm":
        ptx = _compile(rmsnorm._rms_norm_kernel, dict(HAS_RESIDUAL=True, BLOCK=4096, USE_PDL=True), {},
                       floats=("eps",), num_warps=16)
    else:
        ptx = _compile(activation._silu_and_mul_kernel, dict(BLOCK=1024, USE_PDL=True), {})
    body = ptx[ptx.index(".entry"):]
    wait = body.index("griddepcontrol.wait")
    assert body.index("griddepcontrol.launch_dependents") > wait
    loads = [m.start() for m in re.finditer(r"ld\.global", body)]
    assert loads and (loads[0] < wait) == (kernel == "rms_norm")
