"""The quantized matmul kernels compiled for Hopper (sm_90) on a machine without a GPU: Triton's compiler rejects
what its interpreter lets pass (tests/test_quant_kernels.py runs them there), and the PTX shows whether the GEMV
reads a group's quant words as vectors (ld.global.v4, or v2 for Q6_K's 8-byte groups), multiplies integer quants
with dp4a, and keeps everything in registers (no local memory: no spills)."""
from __future__ import annotations

import re

import pytest

triton = pytest.importorskip("triton")

from triton_interpreter import IN_PROCESS  # noqa: E402

from localllm.kernels.block_formats import BLOCK_FORMATS, PLANES  # noqa: E402

pytestmark = pytest.mark.skipif(IN_PROCESS, reason="compiles real kernels: not under TRITON_INTERPRET=1")
_GEMV_INTS = ["K", "stride_xm", "stride_ym"]
_TYPES = {"int32": "i32", "float16": "fp16", "uint8": "u8", "int8": "i8", "float32": "fp32"}


class _OffGpu:
    """What quant_launch.constants asks of x (FP8_HW, Hopper's float8 conversion, is then set by hand)."""
    is_cuda = False


def _gemv_part(fmt: str) -> tuple[dict, dict]:
    """The constexprs and pointer types of a weight of `fmt` in the GEMV (quant_gemv._part's)."""
    from localllm.kernels import quant_gemv as qv
    from localllm.kernels.quant_int_dots import int_constants
    from localllm.kernels.quant_launch import a_plane, constants, gemv_unit_words

    plane_types = {p.name: _TYPES[p.dtype] for p in PLANES[fmt]}
    b_name = next((n for n in ("m", "mn", "zero") if n in plane_types), "q")
    pointers = {"q_ptr": "i32", "qh_ptr": "i32", "a_ptr": plane_types[a_plane(fmt)], "b_ptr": plane_types[b_name],
                "d_ptr": "fp16", "e_ptr": "fp16", "partial_ptr": "fp32", "arrivals_ptr": "i32",
                "xs_ptr": "fp32", "xsum_ptr": "fp32"}
    values = {**constants(fmt, _OffGpu()), **int_constants(fmt, _OffGpu()), "ASM": True,
              "UNIT": gemv_unit_words(fmt), "PACK_X": qv._packs_x(fmt), "FP8_HW": True}
    if fmt != "fp8_e4m3_g128" and not values["PACK_X"]:
        pointers["x_ptr"] = "i32"     # pack_fixed_x's words
    return values, pointers


def _ptx(kernel, fmt: str, x_type: str, ints: list[str], tiles: dict, num_warps: int = 4,
         second: tuple[dict, dict] | None = None) -> str:
    """kernel's PTX for sm_90 with fmt's constants and `tiles`; second: the pair kernel's second weight's
    (constexprs and pointer types, named as for the first)."""
    from localllm.kernels import quant_gemm as qg
    from localllm.kernels import quant_gemv as qv
    from localllm.kernels.quant_launch import constants, group_words

    gemv_values, pointers = _gemv_part(fmt)
    if kernel in (qv._gemv_kernel, qv._gemv_pair_kernel):
        values = gemv_values
    elif kernel is qg._dot_kernel:
        values = dict(constants(fmt, _OffGpu()), UNIT=group_words(fmt), F32_DOT=False)
    else:
        values = constants(fmt, _OffGpu())
    if values is not gemv_values:
        pointers.pop("x_ptr", None)     # x itself
    values = {**values, "FP8_HW": True, **tiles}
    if second is not None:
        values.update({qv._second(k): v for k, v in second[0].items() if k != "ASM"})
        pointers.update({qv._second(k): v for k, v in second[1].items()})
    return _compile(kernel, values, pointers, x_type, ints, num_warps)


def _compile(kernel, values: dict, pointers: dict, x_type: str, ints: list[str], num_warps: int) -> str:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = {}
    for name in names:
        if name in values:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointers.get(name, x_type)
        else:
            signature[name] = "i32"
    aligned = [i for i, n in enumerate(names) if n.endswith("_ptr") or n in ints]
    source = ASTSource(fn=kernel, signature=signature, attrs={(i,): [["tt.divisibility", 16]] for i in aligned},
                       constexprs={(names.index(k),): v for k, v in values.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]


def test_pair_of_formats_compiles_for_hopper_in_one_kernel():
    """Q4_K_M's q/k (Q4_K, 4 rows a tile) and v (Q6_K, 2 rows, 2 ahead) in one launch: both bodies, no spills."""
    from localllm.kernels.quant_gemv import _gemv_pair_kernel, _second

    tiles = dict(BLOCK_N=4, BLOCK_U=128, BLOCK_M=1, AHEAD=1, WIDE=False, WHOLE_SLICES=True, GATED=False,
                 USE_PDL=True)
    values, pointers = _gemv_part("Q6_K")
    values.update(BLOCK_N=2, BLOCK_U=128, AHEAD=2, WIDE=False, WHOLE_SLICES=True, GATED=False)
    ptx = _ptx(_gemv_pair_kernel, "Q4_K", "bf16", _GEMV_INTS + ["stride_ym2"], tiles, second=(values, pointers))
    assert _second("x_ptr") == "x2_ptr" and _second("FMT") == "FMT2"
    assert ptx.count("griddepcontrol.wait") == 2 and "dp4a.s32.s32" in ptx and ".local" not in ptx


@pytest.mark.parametrize("fmt", list(BLOCK_FORMATS))
def test_gemv_compiles_for_hopper_with_vector_loads_and_no_spills(fmt):
    from localllm.kernels.quant_gemv import _gemv_kernel

    tiles = dict(BLOCK_N=4, BLOCK_U=64, BLOCK_M=1, AHEAD=2, WIDE=False, WHOLE_SLICES=True, GATED=False,
                 USE_PDL=True)
    ptx = _ptx(_gemv_kernel, fmt, "bf16", _GEMV_INTS, tiles, num_warps=2)
    words_a_group = BLOCK_FORMATS[fmt].group * PLANES[fmt][0].bits // 32     # Q6_K's: 2 (8 bytes)
    assert re.search(rf"ld\.global(\.\w+)*\.v{min(4, words_a_group)}\.b32", ptx)
    assert ("dp4a.s32.s32" in ptx) == (fmt != "fp8_e4m3_g128")
    assert ".local" not in ptx


def test_gemv_at_two_rows_gated_and_dequantize_compile_for_hopper():
    """Two rows of x, K split (the partial sums' atomics), the SiLU-and-mul epilogue (its exp2)."""
    from localllm.kernels.quant_gemv import _gemv_kernel
    from localllm.kernels.quant_matmul import _dequantize_kernel

    tiles = dict(BLOCK_N=2, BLOCK_U=64, BLOCK_M=2, AHEAD=1, WIDE=True,
                 WHOLE_SLICES=False, GATED=True, USE_PDL=True)
    ptx = _ptx(_gemv_kernel, "Q4_K", "bf16", _GEMV_INTS, tiles, num_warps=2)
    assert "atom.global" in ptx and "ex2.approx" in ptx and ".local" not in ptx
    for gather in (False, True):     # a weight's rows, an embedding's rows by index
        ptx = _ptx(_dequantize_kernel, "Q6_K", "bf16", ["K"], dict(BLOCK_N=4, BLOCK_U=128, GATHER=gather))
        assert re.search(r"ld\.global(\.\w+)*\.v2\.b32", ptx) and ".local" not in ptx


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K", "Q8_0"])
def test_dot_kernel_compiles_for_hopper_onto_the_tensor_cores(fmt):
    from localllm.kernels.quant_gemm import _dot_kernel

    ptx = _ptx(_dot_kernel, fmt, "bf16", ["K", "stride_xm", "stride_ym", "units_per_split"],
               dict(BLOCK_M=16, BLOCK_N=128, BLOCK_U=128 // BLOCK_FORMATS[fmt].group))
    assert "mma.sync" in ptx and ".local" not in ptx
