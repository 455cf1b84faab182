"""The decode GEMV's integer dot products (quant_gemv, for every format but FP8): x packed in fixed
point (pack_fixed_x; fixed_x_ref says how and why 15 bits), then a group's sum(q * x) is integer: one dp4a
instruction multiplies four quants by four bytes of x and adds them up, where the float path spent a shift, a mask
and an FMA on each weight. A group's result is then s * (128 * dot(q, h) + dot(q, l)) * scale + shift * sum(x), s
x's scale, scale and shift the weight's (quant_tiles.load_units, the format's constant offset moved into shift).

The quant words give four quants as bytes without moving them: for 8-bit formats the words are the bytes; for the
others the low nibbles of a word's bytes (masked) are its quants j = 0, 2, 4, 6 and the high ones (shifted, masked)
j = 1, 3, 5, 7, with Q5_K's / Q6_K's high bits or-ed above them (quant_bytes). The x words were laid out to meet
them (fixed_x_ref)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels import fixed_x_ref
from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel

X_LEVELS = tl.constexpr(fixed_x_ref.X_LEVELS)
# the formats' constant offset, taken off their unsigned quants: Q4_0 (q - 8), Q6_K (q - 32)
_Q_OFFSETS = {"Q4_0": 8, "Q6_K": 32}
PACK_GROUPS = 8      # groups of x a packing program takes on a GPU (small: a decode step's x is a few thousand values)


@triton.jit
def dp4a(a, b, acc, ASM: tl.constexpr):
    """acc + the sum of the products of a's and b's four signed bytes (int32 tensors, broadcast together). ASM:
    the GPU's instruction; otherwise byte by byte (what Triton's interpreter runs)."""
    if ASM:
        acc = tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, acc], dtype=tl.int32,
                                        is_pure=True, pack=1)
    else:
        for k in tl.static_range(4):
            acc += ((a << (24 - 8 * k)) >> 24) * ((b << (24 - 8 * k)) >> 24)
    return acc


@triton.jit
def quant_bytes(words, high, half: tl.constexpr, FMT: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr):
    """Four quants of each word [R, BU, UNIT] as the bytes of an int32 (unsigned; Q8_0's signed): 8-bit formats'
    words as they are; otherwise quants j = half, half + 2, half + 4, half + 6 of word c, which are the group's
    weights (2 k + half) C + c, with the Q5_K / Q6_K high bits of weight t (at bits HB * t of high [R, BU, 1]) in
    bits 4.. of their byte."""
    if BITS == 8:
        q = words
    else:
        q = (words >> (4 * half)) & 0x0F0F0F0F
        if FMT == 4 or FMT == 5:
            HB: tl.constexpr = 1 if FMT == 4 else 2
            c = tl.arange(0, words.shape[2])[None, None, :]
            top = (high >> (HB * (c + half * (G // 8)))) & (((1 << HB) - 1) * 0x01010101)
            q = q | (top << 4)
    return q


@triton.jit
def _x_words(xq_row, units, ok, half: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr):
    """The h and the l words of x [BU, UNIT] that meet quant_bytes(..., half) of units [BU]."""
    C: tl.constexpr = G * BITS // 32
    UNITS_A_GROUP: tl.constexpr = C // UNIT
    first = (units // UNITS_A_GROUP) * (G // 2) + (units % UNITS_A_GROUP) * UNIT + half * C
    cols = first[:, None] + tl.arange(0, UNIT)[None, :]
    return (tl.load(xq_row + cols, mask=ok[:, None], other=0),
            tl.load(xq_row + cols + G // 4, mask=ok[:, None], other=0))


@triton.jit
def load_fixed_x(xq_row, xs_row, xsum_row, units, ok, BITS: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr):
    """One row of packed x (its words, scales and sums) for units [BU] (ok: those to read), in the threads of the
    units: (h and l words [BU, UNIT] of half 0, the same of half 1 (8-bit formats: half 0's again), x's scale and
    sum [BU] of each unit's group)."""
    UNITS_A_GROUP: tl.constexpr = G * BITS // 32 // UNIT
    groups = units // UNITS_A_GROUP
    high0, low0 = _x_words(xq_row, units, ok, 0, BITS, G, UNIT)
    if BITS == 4:
        high1, low1 = _x_words(xq_row, units, ok, 1, BITS, G, UNIT)
    else:
        high1, low1 = high0, low0
    return (high0, low0, high1, low1, tl.load(xs_row + groups, mask=ok, other=0.0),
            tl.load(xsum_row + groups, mask=ok, other=0.0))


@triton.jit
def _fixed_point(x):
    """fixed_x_ref's arithmetic on x [groups, 4, A, B] (float32; byte k of word (a, b) is x[:, k, a, b]): the h and
    the l words [groups, A, B], each group's scale and sum [groups]."""
    byte = tl.arange(0, 4)[None, :, None, None]
    amax = tl.max(tl.max(tl.max(tl.abs(x), 3), 2), 1)
    nonzero = amax > 0
    inverse = tl.where(nonzero, tl.div_rn(tl.full(amax.shape, X_LEVELS, tl.float32), tl.where(nonzero, amax, 1.0)),
                       0.0)
    v = tl.floor(x * inverse[:, None, None, None] + 0.5).to(tl.int32)
    high = tl.sum(((v >> 7) & 255) << (8 * byte), 1)
    low = tl.sum((v & 127) << (8 * byte), 1)
    return high, low, amax / X_LEVELS, tl.sum(tl.sum(tl.sum(x, 3), 2), 1)


@triton.jit
def pack_x_groups(x_row, units, ok, BITS: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr):
    """load_fixed_x's tensors computed here from x's row itself (float, columns contiguous) where a unit is a
    whole group: every thread holds its group's G values, so its scale is found without other threads, and the
    GEMV needs no packing launch before it (one a matmul input: ~2.5 us each, ~0.35 ms of an 8B decode step).
    The same arithmetic as pack_fixed_x (only the group sum's order of additions differs)."""
    # word i = half * UNIT + c of the group, as [BU, byte, c, half]; the 8-bit formats' Q words are one half
    HALVES: tl.constexpr = 2 if BITS == 4 else 1
    word = tl.arange(0, UNIT)[None, None, :, None] + UNIT * tl.arange(0, HALVES)[None, None, None, :]
    cols = units[:, None, None, None] * G + tl.arange(0, 4)[None, :, None, None] * (G // 4) + word
    x = tl.load(x_row + cols, mask=ok[:, None, None, None], other=0.0).to(tl.float32)
    high, low, scale, sums = _fixed_point(x)      # [BU, c, half]
    if BITS == 4:
        high0, high1 = tl.split(high)
        low0, low1 = tl.split(low)
    else:
        high0 = tl.reshape(high, [high.shape[0], UNIT])
        low0 = tl.reshape(low, [low.shape[0], UNIT])
        high1, low1 = high0, low0
    return high0, low0, high1, low1, scale, sums


@triton.jit
def fixed_dots(words, high, scale, shift, x_high0, x_low0, x_high1, x_low1, x_scale, x_sum, FMT: tl.constexpr,
               BITS: tl.constexpr, G: tl.constexpr, HAS_SHIFT: tl.constexpr, ASM: tl.constexpr):
    """A tile's words [R, BU, UNIT] (with load_units' high, scale, shift, the format's offset in shift) against one
    row of x (load_fixed_x's): the sums of w * x over each unit, float32 [R, BU]."""
    q = quant_bytes(words, high, 0, FMT, BITS, G)
    high_dots = dp4a(q, x_high0[None], tl.zeros(words.shape, tl.int32), ASM)
    low_dots = dp4a(q, x_low0[None], tl.zeros(words.shape, tl.int32), ASM)
    if BITS == 4:
        q = quant_bytes(words, high, 1, FMT, BITS, G)
        high_dots = dp4a(q, x_high1[None], high_dots, ASM)
        low_dots = dp4a(q, x_low1[None], low_dots, ASM)
    sums = tl.sum(high_dots * 128 + low_dots, 2).to(tl.float32) * (scale * x_scale[None, :])
    if HAS_SHIFT:
        sums += shift * x_sum[None, :]
    return sums


@triton.jit
def _pack_fixed_x_kernel(x_ptr, words_ptr, scale_ptr, sum_ptr, K, stride_xm, G: tl.constexpr,
                         BLOCK_G: tl.constexpr, USE_PDL: tl.constexpr):
    """fixed_x_ref for groups pid(1) * BLOCK_G.. of row pid(0) of x."""
    m = tl.program_id(0)
    groups = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = groups < K // G
    Q: tl.constexpr = G // 4
    cols = (groups[:, None, None, None] * G + tl.arange(0, 4)[None, :, None, None] * Q
            + tl.arange(0, Q)[None, None, :, None])                                      # [BLOCK_G, 4, Q, 1]
    wait_for_previous_kernel(USE_PDL)
    x = tl.load(x_ptr + m * stride_xm + cols, mask=ok[:, None, None, None], other=0.0).to(tl.float32)
    high, low, scale, sums = _fixed_point(x)      # words [BLOCK_G, Q, 1]
    high, low = tl.reshape(high, [BLOCK_G, Q]), tl.reshape(low, [BLOCK_G, Q])
    out = words_ptr + m * (K // 2) + groups[:, None] * (2 * Q) + tl.arange(0, Q)[None, :]
    tl.store(out, high, mask=ok[:, None])
    tl.store(out + Q, low, mask=ok[:, None])
    tl.store(scale_ptr + m * (K // G) + groups, scale, mask=ok)
    tl.store(sum_ptr + m * (K // G) + groups, sums, mask=ok)


def pack_fixed_x(x2: torch.Tensor, group: int, packed: dict | None = None) -> tuple[torch.Tensor, ...]:
    """x2 [M, K] (columns contiguous) -> fixed_x_ref's (words [M, K / 2], scales [M, K / group], sums). packed:
    where the parts of one merged projection keep theirs by group, so that x is packed once for all of them."""
    if packed is not None and group in packed:
        return packed[group]
    m, k = x2.shape
    words = torch.empty((m, k // 2), dtype=torch.int32, device=x2.device)
    scale = torch.empty((m, k // group), dtype=torch.float32, device=x2.device)
    sums = torch.empty_like(scale)
    block_g = PACK_GROUPS if x2.is_cuda else 4
    _pack_fixed_x_kernel[(m, triton.cdiv(k // group, block_g))](x2, words, scale, sums, k, x2.stride(0), G=group,
                                                              BLOCK_G=block_g, **pdl_options(x2.device))
    if packed is not None:
        packed[group] = words, scale, sums
    return words, scale, sums


def int_constants(fmt: str, x: torch.Tensor) -> dict:
    """The GEMV's constants of the integer path: the dp4a instruction on a GPU, whether the format has a shift,
    and its quants' offset (the GEMV takes it off through the shift)."""
    return dict(ASM=x.is_cuda, HAS_SHIFT=fmt != "Q8_0", Q_OFFSET=_Q_OFFSETS.get(fmt, 0))
