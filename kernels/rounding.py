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
