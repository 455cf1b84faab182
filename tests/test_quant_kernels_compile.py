"""The quantized matmul kernels compiled for Hopper (sm_90) on a machine without a GPU: Triton's compiler rejects
what its interpreter lets pass (tests/test_quant_kernels.py runs them there), and the PTX shows whether the GEMV
reads its quant words as 16-byte vectors (ld.global.v4), turns integers into floats without conversion instructions,
and keeps everything in registers (no local memory: no spills)."""
from __future__ import annotations

import re

import pytest

triton = pytest.importorskip("triton")

from triton_interpreter import IN_PROCESS  # noqa: E402

from localllm.kernels.block_formats import BLOCK_FORMATS, PLANES  # noqa: E402

pytestmark = pytest.mark.skipif(IN_PROCESS, reason="compiles real kernels: not under TRITON_INTERPRET=1")
_TYPES = {"int32": "i32", "float16": "fp16", "uint8": "u8", "int8": "i8", "float32": "fp32"}


class _OffGpu:
    """What quant_matmul._constants asks of x (FP8_HW, Hopper's float8 conversion, is then set by hand)."""
    is_cuda = False


def _ptx(kernel, fmt: str, x_type: str, ints: list[str], tiles: dict) -> str:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from localllm.kernels import quant_matmul as qm

    plane_types = {p.name: _TYPES[p.dtype] for p in PLANES[fmt]}
    b_name = next((n for n in ("m", "mn", "zero") if n in plane_types), "q")
    pointers = {"q_ptr": "i32", "qh_ptr": "i32", "a_ptr": plane_types[qm._a_plane(fmt)], "b_ptr": plane_types[b_name],
                "d_ptr": "fp16", "e_ptr": "fp16", "partial_ptr": "fp32", "arrivals_ptr": "i32"}
    constants = {**qm._constants(fmt, _OffGpu()), "FP8_HW": True, **tiles}
    names = kernel.arg_names
    signature = {}
    for name in names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointers.get(name, x_type)
        else:
            signature[name] = "i32"
    aligned = [i for i, n in enumerate(names) if n.endswith("_ptr") or n in ints]
    source = ASTSource(fn=kernel, signature=signature, attrs={(i,): [["tt.divisibility", 16]] for i in aligned},
                       constexprs={(names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]


@pytest.mark.parametrize("fmt", list(BLOCK_FORMATS))
def test_gemv_compiles_for_hopper_with_vector_loads_and_no_spills(fmt):
    from localllm.kernels.quant_matmul import _gemv_kernel

    ptx = _ptx(_gemv_kernel, fmt, "bf16", ["K", "KW", "stride_xm", "stride_ym", "words_per_split"],
               dict(BLOCK_N=32, BLOCK_W=32, BLOCK_M=1, SPLIT=1))
    assert re.search(r"ld\.global(\.\w+)*\.v4\.b32", ptx)
    assert not re.search(r"cvt\.rn\.f32\.[su]32", ptx)
    assert ".local" not in ptx


def test_split_gemv_at_eight_rows_and_dequantize_compile_for_hopper():
    from localllm.kernels.quant_matmul import _dequantize_kernel, _gemv_kernel

    ptx = _ptx(_gemv_kernel, "Q4_K", "bf16", ["K", "KW", "stride_xm", "stride_ym", "words_per_split"],
               dict(BLOCK_N=8, BLOCK_W=64, BLOCK_M=8))
    assert "atom.global" in ptx and ".local" not in ptx
    ptx = _ptx(_dequantize_kernel, "Q6_K", "bf16", ["K", "KW"], dict(BLOCK_N=32, BLOCK_W=64))
    assert re.search(r"ld\.global(\.\w+)*\.v4\.b32", ptx) and ".local" not in ptx
