"""Rounding to a model's dtype inside kernels, where transformers' torch ops round (each op's result rounded to
bfloat16 or float16), so that bf16 models compute what transformers computes and near-ties of greedy decoding go
the same way. Plain torch needs no reference: the tests compare the kernels with transformers' own functions."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rounded(x, dtype: tl.constexpr):
    """float32 x rounded to dtype and back, to nearest even as torch rounds. Spelled out for bfloat16: Triton's
    interpreter truncates there, and a kernel that rounds several times would drift from torch under it."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
    return x.to(dtype).to(tl.float32)


E4M3_MAX = tl.constexpr(448.0)   # the largest finite float8_e4m3fn


@triton.jit
def e4m3_bits(x):
    """float32 x -> float8_e4m3fn bits (int32 0..255): round to nearest even, saturating at +-448, the sign of -0
    and of values that round to 0 kept. Normal results round the float32 mantissa to 3 bits and rebias the exponent
    (127 -> 7); below 2^-6 the result is a subnormal m * 2^-9, m = x * 512 rounded by adding 2^23 in float32."""
    sign = (x.to(tl.int32, bitcast=True) >> 24) & 0x80
    a = tl.minimum(tl.abs(x), E4M3_MAX)
    bits = a.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) - (120 << 3)
    subnormal = (a * 512.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
    return tl.where(a < 0.015625, subnormal, normal) | sign


@triton.jit
def to_e4m3(x, HW: tl.constexpr):
    """float32 x as float8_e4m3fn, rounded to nearest even and saturated at +-448 (what torch's conversion gives
    after a clamp to +-448; torch alone turns 480 and more into NaN): by the GPU's conversion instruction when HW,
    else bit by bit, since Triton's interpreter truncates and wraps."""
    if HW:
        return tl.clamp(x, -E4M3_MAX, E4M3_MAX).to(tl.float8e4nv)
    return e4m3_bits(x).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
