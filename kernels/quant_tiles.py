"""The block decoders of the quantized matmul kernels (quant_matmul, quant_gemm): a tile of a quantized weight's
planes (block_formats.PLANES) read group by group and turned into float32 quants, a scale and a shift, so that
w = q * scale + shift exactly as quant_blocks_ref dequantizes the blocks.

A tile is R weight rows by BU units: a group (the G weights sharing one scale, block_formats.BlockFormat.group) is C
= G / E int32 words of the quant plane (E weights a word), read in units of UNIT words: min(C, 4), one vector load
each, in the GEMV and the dequantize kernel; C in the tensor-core kernel. The words are [R, BU, UNIT] with UNIT
innermost, and a unit's scale fields are loaded with it: a load per group, not per word. Bits j of the C words of
a group hold its weights j * C .. j * C + C - 1, so the words of a unit meet UNIT consecutive columns of x.

Integer quants become float32 with the exponent trick ((q | 0x4B000000) as float32 - 2^23, exact below 2^23): two
integer and one float instruction, where a conversion instruction has a quarter of their throughput.
"""
from __future__ import annotations

import triton
import triton.language as tl

from localllm.kernels.activation import silu_mul
from localllm.kernels.rounding import rounded

_MAGIC = tl.constexpr(8388608.0)      # 2^23


@triton.jit
def small_int_f32(u, bias: tl.constexpr):
    """int32 u in [0, 2^23) -> float32 u - bias, exactly."""
    return (u | 0x4B000000).to(tl.float32, bitcast=True) - (_MAGIC + bias)


@triton.jit
def fp8_e4m3(byte, HW: tl.constexpr):
    """float8_e4m3fn bits (int32 0..255) as float32. HW: the GPU's conversion (Hopper, Ada); otherwise built bit
    by bit (exact, and what Triton's interpreter runs): sign, 4 exponent bits of bias 7, 3 mantissa bits, exponent
    0 subnormal (m / 8 * 2^-6). NaN (0x7f / 0xff) is not expected in weights."""
    if HW:
        return byte.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)
    sign = tl.where((byte & 0x80) != 0, -1.0, 1.0)
    exponent = (byte >> 3) & 15
    mantissa = byte & 7
    normal = ((exponent + 120) << 23) | (mantissa << 20)      # float32 exponent bias 127 = 7 + 120
    magnitude = tl.where(exponent == 0, mantissa.to(tl.float32) * 0.001953125, normal.to(tl.float32, bitcast=True))
    return sign * magnitude


@triton.jit
def field_f32(v):
    """A scale field as float32: a byte field (the K-quants' sc / mn, int4's zero) by small_int_f32, on the
    integer and float pipes, where a conversion instruction runs at a quarter of their rate; floats converted."""
    if v.dtype == tl.uint8:
        f = small_int_f32(v.to(tl.int32), 0)
    elif v.dtype == tl.int8:
        f = small_int_f32(v.to(tl.int32) + 128, 128)
    else:
        f = v.to(tl.float32)
    return f


@triton.jit
def _load(ptrs, mask, MASKED: tl.constexpr):
    """ptrs' values where mask (zero elsewhere), or every one of them when not MASKED."""
    if MASKED:
        values = tl.load(ptrs, mask=mask, other=0)
    else:
        values = tl.load(ptrs)
    return values


@triton.jit
def load_units(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, rows, units, mask, K,
               FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr,
               MASKED: tl.constexpr = True):
    """Units `units` [1, BU] of weight rows `rows` [R, 1] (int32 where every plane's offsets fit, else int64); mask
    [1, BU]: the units to read (MASKED False: all, and the loads need no predicates nor zeroed registers). A unit is
    UNIT words of the quant plane (16 bytes, or a whole group where that is less): a group's C words are C /
    UNIT units. Returns (words [R, BU, UNIT], high [R, BU, 1], scale [R, BU], shift [R, BU]) with w = q * scale +
    shift for the quants q of unit_quants. high: the word of Q5_K / Q6_K high bits of each group (one a group in
    both; zero otherwise). Plane a is each format's per-group scale field (d, or sc for the K-quants), b its
    second one (m, mn, zero), d / e the K-quants' d / dmin per 256 weights (quant_planes_ref names them)."""
    UNITS_A_GROUP: tl.constexpr = G * BITS // 32 // UNIT
    words = _load(q_ptr + (rows * (K // G * UNITS_A_GROUP) + units)[:, :, None] * UNIT
                  + tl.arange(0, UNIT)[None, None, :], mask[:, :, None], MASKED)
    groups = units // UNITS_A_GROUP
    first_weight = groups * G
    scale_offs = rows * (K // A_PER) + first_weight // A_PER
    scale = field_f32(_load(a_ptr + scale_offs, mask, MASKED))
    shift = tl.zeros(scale.shape, tl.float32)
    high = tl.zeros(scale.shape, tl.int32)
    if FMT == 1:    # Q4_1: d * q + m
        shift = _load(b_ptr + scale_offs, mask, MASKED).to(tl.float32)
    elif FMT == 6:  # int4_g128: (q - zero) * d
        shift = -(field_f32(_load(b_ptr + scale_offs, mask, MASKED)) * scale)
    elif FMT >= 3 and FMT <= 5:   # K-quants: d per 256 weights times a small integer scale per group
        superblock = rows * (K // 256) + first_weight // 256
        scale = scale * _load(d_ptr + superblock, mask, MASKED).to(tl.float32)
        if FMT != 3:    # Q5_K / Q6_K: one word of high bits a group (and a group is one unit)
            high = _load(qh_ptr + rows * (K // G) + groups, mask, MASKED)
        if FMT != 5:
            dmin = _load(e_ptr + superblock, mask, MASKED).to(tl.float32)
            shift = -(dmin * field_f32(_load(b_ptr + scale_offs, mask, MASKED)))
    return words, high[:, :, None], scale, shift


@triton.jit
def unit_columns(units, j: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr):
    """[BU, UNIT]: the columns of the weight (and of x) that bits j of the words of units [BU] hold."""
    C: tl.constexpr = G * BITS // 32
    UNITS_A_GROUP: tl.constexpr = C // UNIT
    first = (units // UNITS_A_GROUP) * G + (units % UNITS_A_GROUP) * UNIT + j * C
    return first[:, None] + tl.arange(0, UNIT)[None, :]


@triton.jit
def unit_quants(words, high, j: tl.constexpr, FMT: tl.constexpr, BITS: tl.constexpr, FP8_HW: tl.constexpr):
    """The quants (float32, their format's constant offset taken off) at bits j * BITS of words [R, BU, UNIT]
    (unit_columns says which weights they are). high [R, BU, 1]: load_units' high bits; a Q5_K / Q6_K group is
    one unit, so word c of the unit is word c of its group."""
    C: tl.constexpr = words.shape[2]
    field = (words >> (j * BITS)) & ((1 << BITS) - 1)
    if FMT == 0:    # Q4_0: q - 8
        q = small_int_f32(field, 8)
    elif FMT == 2:  # Q8_0: int8
        q = small_int_f32(field ^ 0x80, 128)
    elif FMT == 4:  # Q5_K: the fifth bit of weight 4 j + c at bit 4 j + c of the group's word
        c = tl.arange(0, C)[None, None, :]
        q = small_int_f32(field | (((high >> (4 * j + c)) & 1) << 4), 0)
    elif FMT == 5:  # Q6_K: q6 - 32; the top bits of weight 2 j + c at bits 2 (2 j + c)
        c = tl.arange(0, C)[None, None, :]
        q = small_int_f32(field | (((high >> (4 * j + 2 * c)) & 3) << 4), 32)
    elif FMT == 7:
        q = fp8_e4m3(field, FP8_HW)
    else:
        q = small_int_f32(field, 0)
    return q


@triton.jit
def unit_weights(words, high, scale, shift, j: tl.constexpr, FMT: tl.constexpr, BITS: tl.constexpr,
                 FP8_HW: tl.constexpr):
    """The weights [R, BU, UNIT] at bits j of a tile's words: float32, exactly quant_blocks_ref's values."""
    return unit_quants(words, high, j, FMT, BITS, FP8_HW) * scale[:, :, None] + shift[:, :, None]


@triton.jit
def ordered_weights(words, high, scale, shift, FMT: tl.constexpr, BITS: tl.constexpr, FP8_HW: tl.constexpr):
    """All the weights of a tile as [R, BU * 32 / BITS * UNIT], unit by unit, then bits j by bits j, then word by
    word: weight (u, j, c) at (u * E + j) * UNIT + c, which is its column's order when a unit is a whole group. The
    E bit planes are stacked with tl.join, in registers: join adds a minor dimension of 2, so a tree of joins and a
    permutation put j in order."""
    if BITS == 4:   # E = 8: the tree's last join splits j's lowest bit, its first its highest
        w = tl.join(tl.join(tl.join(unit_weights(words, high, scale, shift, 0, FMT, BITS, FP8_HW),
                                    unit_weights(words, high, scale, shift, 4, FMT, BITS, FP8_HW)),
                            tl.join(unit_weights(words, high, scale, shift, 2, FMT, BITS, FP8_HW),
                                    unit_weights(words, high, scale, shift, 6, FMT, BITS, FP8_HW))),
                    tl.join(tl.join(unit_weights(words, high, scale, shift, 1, FMT, BITS, FP8_HW),
                                    unit_weights(words, high, scale, shift, 5, FMT, BITS, FP8_HW)),
                            tl.join(unit_weights(words, high, scale, shift, 3, FMT, BITS, FP8_HW),
                                    unit_weights(words, high, scale, shift, 7, FMT, BITS, FP8_HW))))
        w = tl.permute(w, (0, 1, 3, 4, 5, 2))      # [R, BU, UNIT, j4, j2, j1] -> [R, BU, j4, j2, j1, UNIT]
    else:           # E = 4
        w = tl.join(tl.join(unit_weights(words, high, scale, shift, 0, FMT, BITS, FP8_HW),
                            unit_weights(words, high, scale, shift, 2, FMT, BITS, FP8_HW)),
                    tl.join(unit_weights(words, high, scale, shift, 1, FMT, BITS, FP8_HW),
                            unit_weights(words, high, scale, shift, 3, FMT, BITS, FP8_HW)))
        w = tl.permute(w, (0, 1, 3, 4, 2))         # [R, BU, UNIT, j2, j1] -> [R, BU, j2, j1, UNIT]
    return tl.reshape(w, [words.shape[0], words.shape[1] * (32 // BITS) * words.shape[2]])


@triton.jit
def _store_y(acc, y_ptr, ms, rows, M, N, stride_ym, GATED: tl.constexpr):
    """y's rows ms [BM] and columns rows of acc [BM, BN], or with GATED of silu(acc's first BN / 2 columns) *
    its last ones: each of them rounded to y's dtype first, as the GEMV would store them for silu_and_mul."""
    dtype: tl.constexpr = y_ptr.dtype.element_ty
    if GATED:
        halves = tl.reshape(acc, [acc.shape[0], 2, acc.shape[1] // 2])
        which = tl.arange(0, 2)[None, :, None]
        gate = rounded(tl.sum(tl.where(which == 0, halves, 0.0), 1), dtype)
        up = rounded(tl.sum(tl.where(which == 1, halves, 0.0), 1), dtype)
        acc = silu_mul(gate, up, dtype)
    y_mask = (ms[:, None] < M) & (rows[None, :] < N)
    tl.store(y_ptr + ms[:, None] * stride_ym + rows[None, :], acc.to(dtype), mask=y_mask)


@triton.jit
def store_tile(acc, y_ptr, partial_ptr, arrivals_ptr, ms, rows, M, N, stride_ym, tile, pid_k, SPLIT,
               GATED: tl.constexpr = False):
    """Stores acc [BM, BN] as y's rows ms [BM] and columns rows [BN] (the weight's rows), or, with K split over
    SPLIT programs, as this program's partial sums: the last program of output tile `tile` to arrive (an atomic
    counter per tile, reset by that program) adds them in order and stores y, so the split costs no extra
    launch and the result does not depend on timing. GATED: acc's columns are BN / 2 rows of a gate matrix and
    the same rows of an up matrix, stored as silu(gate) * up in y's columns rows [BN / 2]."""
    BM: tl.constexpr = acc.shape[0]
    BN: tl.constexpr = acc.shape[1]
    if SPLIT == 1:
        _store_y(acc, y_ptr, ms, rows, M, N, stride_ym, GATED)
    else:
        part = (tile * SPLIT * BM + tl.arange(0, BM)[:, None]) * BN + tl.arange(0, BN)[None, :]
        tl.store(partial_ptr + part + pid_k * BM * BN, acc)
        tl.debug_barrier()      # every thread's partial is written before the arrival is counted (acq_rel)
        if tl.atomic_add(arrivals_ptr + tile, 1) == SPLIT - 1:
            total = tl.zeros([BM, BN], tl.float32)
            for s in range(SPLIT):
                total += tl.load(partial_ptr + part + s * BM * BN, cache_modifier=".cg")
            _store_y(total, y_ptr, ms, rows, M, N, stride_ym, GATED)
            tl.atomic_xchg(arrivals_ptr + tile, 0)
