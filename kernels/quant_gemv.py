"""The decode GEMV over quantized planes (quant_matmul's path for up to GEMV_MAX_ROWS rows of x): y = x @ W^T, two
rows of x a launch.

x stays put, the weight streams past it. A program owns one slice of K, BLOCK_U units wide (a unit, 16 bytes or a
group of a row's quant words, to each thread: quant_tiles.load_units), and loads x for that slice once, into the
threads that meet its columns; then it walks row tiles pid_n, pid_n + ROW_PROGRAMS, ...: BLOCK_N rows' units and
scale fields a step, the next step's read while this one multiplies. Each row tile's sum over the slice goes to
quant_tiles.store_tile, whose last arriving slice adds the slices up. Loading x for every row tile instead (the
unit-loop GEMV before this one) read x from the caches about twice as often as the weights themselves.

Every format but FP8 multiplies in integers (quant_int_dots: x packed in 15-bit fixed point first, one dp4a per
four quants); FP8 multiplies its float8 weights by x's float32 columns.

A merged gate/up weight may store silu(gate) * up itself (GATED: a tile's rows half from each matrix), and two
weights of two formats (a merged projection's parts) may share one launch (_gemv_pair_kernel): at one token a step
a launch costs about what a small matrix's GEMV does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.block_formats import block_format
from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel
from localllm.kernels.quant_int_dots import fixed_dots, int_constants, load_fixed_x, pack_fixed_x, pack_x_groups
from localllm.kernels.quant_launch import (SplitWorkspace, constants, gemv_unit_words, group_words, kernel_planes,
                                          row_units, sm_count)
from localllm.kernels.quant_tiles import load_units, store_tile, unit_columns, unit_quants

# the GEMV's programs: about this many per SM (the slices of K times the row programs)
PROGRAMS_PER_SM = 8
# a slice of K: at most this many units (a row of Llama-3.1-8B's down_proj is 448 in Q4_K, 896 in Q6_K)
MAX_SLICE_UNITS = 1024
# The tiles of the integer formats, which pack x in each program (scripts/gpu_quant_check.py's sweep at
# Llama-3.1-8B's shapes on one H200, at one row of x, the loads unmasked). Rows of up to SHORT_ROW_WEIGHTS weights:
# 4 warps and 4 programs a SM; 4 rows a tile for the 4-bit formats without high bits (Q4_K gate_up 23.1 us against
# 27.7 at 2 rows, qkv 7.5, LM head 87.0; Q4_1 gate_up 23.5; Q4_0 20.7), 2 for the others, Q6_K reading two tiles
# ahead (LM head 121.3 us against 123.9; Q4_K lost with it: gate_up 26.2). Longer rows (down_proj's 14,336): one
# row a tile, 8 warps and 2 programs a SM, the fewer programs the fewer times x is loaded and packed (Q4_K 16.5 us;
# Q6_K 20.4 against 26.1 at 2 rows).
SHORT_ROW_WEIGHTS = 4096
_FOUR_ROW_TILE = dict(BLOCK_N=4, num_warps=4, PROGRAMS_PER_SM=4, AHEAD=1)
_SHORT_ROW_TILES = {"Q4_0": _FOUR_ROW_TILE, "Q4_1": _FOUR_ROW_TILE, "Q4_K": _FOUR_ROW_TILE,
                    "Q6_K": dict(BLOCK_N=2, num_warps=4, PROGRAMS_PER_SM=4, AHEAD=2)}
_SHORT_ROW_TILE = dict(BLOCK_N=2, num_warps=4, PROGRAMS_PER_SM=4, AHEAD=1)
_LONG_ROW_TILE = dict(BLOCK_N=1, num_warps=8, PROGRAMS_PER_SM=2, AHEAD=1)
FP8 = "fp8_e4m3_g128"


@triton.jit
def _load_x(x_ptr, xs_ptr, xsum_ptr, stride_xm, K, row, units, ok, FMT: tl.constexpr, BITS: tl.constexpr,
            G: tl.constexpr, UNIT: tl.constexpr, PACK_X: tl.constexpr):
    """Row `row` of x for units [BU] (ok: those to read): load_fixed_x's six tensors (PACK_X: packed here from
    x itself), or for FP8 x's float32 columns [BU, UNIT] at bits j = 0..3 of the words (and two zeros)."""
    if FMT == 7:
        x_row = x_ptr + row * stride_xm
        x0 = tl.load(x_row + unit_columns(units, 0, BITS, G, UNIT), mask=ok[:, None], other=0.0).to(tl.float32)
        x1 = tl.load(x_row + unit_columns(units, 1, BITS, G, UNIT), mask=ok[:, None], other=0.0).to(tl.float32)
        x2 = tl.load(x_row + unit_columns(units, 2, BITS, G, UNIT), mask=ok[:, None], other=0.0).to(tl.float32)
        x3 = tl.load(x_row + unit_columns(units, 3, BITS, G, UNIT), mask=ok[:, None], other=0.0).to(tl.float32)
        x_scale = 0.0
        x_sum = 0.0
    elif PACK_X:
        x0, x1, x2, x3, x_scale, x_sum = pack_x_groups(x_ptr + row * stride_xm, units, ok, BITS, G, UNIT)
    else:
        x0, x1, x2, x3, x_scale, x_sum = load_fixed_x(x_ptr + row * (K // 2), xs_ptr + row * (K // G),
                                                      xsum_ptr + row * (K // G), units, ok, BITS, G, UNIT)
    return x0, x1, x2, x3, x_scale, x_sum


@triton.jit
def _row_sums(words, high, scale, shift, x0, x1, x2, x3, x_scale, x_sum, FMT: tl.constexpr, BITS: tl.constexpr,
              G: tl.constexpr, FP8_HW: tl.constexpr, HAS_SHIFT: tl.constexpr, ASM: tl.constexpr):
    """One row of x (_load_x's) against a tile's words [R, BU, UNIT]: the sums of w * x over each row, [R]."""
    if FMT == 7:
        dots = unit_quants(words, words, 0, 7, BITS, FP8_HW) * x0[None]
        dots += unit_quants(words, words, 1, 7, BITS, FP8_HW) * x1[None]
        dots += unit_quants(words, words, 2, 7, BITS, FP8_HW) * x2[None]
        dots += unit_quants(words, words, 3, 7, BITS, FP8_HW) * x3[None]
        sums = tl.sum(dots, 2) * scale
    else:
        sums = fixed_dots(words, high, scale, shift, x0, x1, x2, x3, x_scale, x_sum, FMT, BITS, G, HAS_SHIFT, ASM)
    return tl.sum(sums, 1)


@triton.jit
def _load_tile(tile, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, units, row_units, row_tiles, N, K,
               FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr,
               BLOCK_N: tl.constexpr, WIDE: tl.constexpr, WHOLE_SLICES: tl.constexpr, GATED: tl.constexpr):
    """Row tile `tile`'s output rows [TILE_ROWS] and load_units' tensors for its BLOCK_N weight rows: the tile's
    rows, or with GATED (N output rows of a [gate; up] weight of 2N rows) its BLOCK_N / 2 rows of the gate and
    the same rows of the up half. A tile past the last reads the last one again (a cache hit; never stored), rows
    past N read row N - 1 (not stored), so that where every slice of K is whole (WHOLE_SLICES) no load needs a
    mask (nor a predicate, nor zeroed registers). WIDE: the planes' offsets need 64 bits (32-bit ones take fewer
    address instructions a load)."""
    TILE_ROWS: tl.constexpr = BLOCK_N >> GATED     # GATED: half a tile's weight rows are the up matrix's
    rows = tile * TILE_ROWS + tl.arange(0, TILE_ROWS)
    j = tl.arange(0, BLOCK_N)
    plane_rows = tl.minimum(tl.minimum(tile, row_tiles - 1) * TILE_ROWS + j % TILE_ROWS, N - 1)
    if GATED:
        plane_rows += j // TILE_ROWS * N
    plane_rows = plane_rows[:, None]
    if WIDE:
        plane_rows = plane_rows.to(tl.int64)
    words, high, scale, shift = load_units(q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, plane_rows, units[None, :],
                                           (units < row_units)[None, :], K, FMT, BITS, A_PER, G, UNIT,
                                           not WHOLE_SLICES)
    return rows, words, high, scale, shift


@triton.jit
def _gemv_program(pid_n, pid_k, x_ptr, xs_ptr, xsum_ptr, y_ptr, partial_ptr, arrivals_ptr, q_ptr, qh_ptr, a_ptr,
                  b_ptr, d_ptr, e_ptr, M, N, K, stride_xm, stride_ym, ROW_PROGRAMS, SPLIT,
                  FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr,
                  FP8_HW: tl.constexpr, HAS_SHIFT: tl.constexpr, Q_OFFSET: tl.constexpr, ASM: tl.constexpr,
                  PACK_X: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_M: tl.constexpr,
                  AHEAD: tl.constexpr, WIDE: tl.constexpr, WHOLE_SLICES: tl.constexpr, GATED: tl.constexpr,
                  USE_PDL: tl.constexpr):
    """Program (pid_n, pid_k): row tiles pid_n, pid_n + ROW_PROGRAMS, ... over slice pid_k of K. x: x itself for
    FP8 and PACK_X, otherwise pack_fixed_x's words, with its scales and sums at xs_ptr / xsum_ptr. Rows of x past M
    repeat the last one (not stored). AHEAD (1 or 2): the row tiles read ahead of the one multiplied, so that more
    of the weight's bytes are in flight while each tile's sums are reduced. N: the output's columns (GATED: half
    the weight's rows, _load_tile)."""
    units = pid_k * BLOCK_U + tl.arange(0, BLOCK_U)
    row_units = K // G * (G * BITS // 32 // UNIT)
    ok = units < row_units
    row_tiles = tl.cdiv(N, BLOCK_N >> GATED)
    # The planes are no kernel's output: the first tiles are read before waiting for the kernel before this one
    # (launched as its programmatic dependent, this kernel starts while that one finishes)
    rows, words, high, scale, shift = _load_tile(pid_n, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, units, row_units,
                                                 row_tiles, N, K, FMT, BITS, A_PER, G, UNIT, BLOCK_N, WIDE,
                                                 WHOLE_SLICES, GATED)
    if AHEAD == 2:
        rows1, words1, high1, scale1, shift1 = _load_tile(pid_n + ROW_PROGRAMS, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr,
                                                          e_ptr, units, row_units, row_tiles, N, K, FMT, BITS,
                                                          A_PER, G, UNIT, BLOCK_N, WIDE, WHOLE_SLICES,
                                                          GATED)
    wait_for_previous_kernel(USE_PDL)
    a0, a1, a2, a3, a_scale, a_sum = _load_x(x_ptr, xs_ptr, xsum_ptr, stride_xm, K, 0, units, ok, FMT, BITS, G,
                                             UNIT, PACK_X)
    if BLOCK_M == 2:
        b0, b1, b2, b3, b_scale, b_sum = _load_x(x_ptr, xs_ptr, xsum_ptr, stride_xm, K, tl.minimum(1, M - 1), units,
                                                 ok, FMT, BITS, G, UNIT, PACK_X)
    for tile in range(pid_n, row_tiles, ROW_PROGRAMS):
        next_rows, next_words, next_high, next_scale, next_shift = _load_tile(
            tile + AHEAD * ROW_PROGRAMS, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, units, row_units, row_tiles, N, K,
            FMT, BITS, A_PER, G, UNIT, BLOCK_N, WIDE, WHOLE_SLICES, GATED)
        if Q_OFFSET != 0:
            shift = shift - scale * Q_OFFSET
        sums = _row_sums(words, high, scale, shift, a0, a1, a2, a3, a_scale, a_sum, FMT, BITS, G, FP8_HW, HAS_SHIFT,
                         ASM)[None, :]
        if BLOCK_M == 2:
            second = _row_sums(words, high, scale, shift, b0, b1, b2, b3, b_scale, b_sum, FMT, BITS, G, FP8_HW,
                               HAS_SHIFT, ASM)[None, :]
            sums = tl.where(tl.arange(0, 2)[:, None] == 0, sums, second)
        store_tile(sums, y_ptr, partial_ptr, arrivals_ptr, tl.arange(0, BLOCK_M), rows, M, N, stride_ym, tile, pid_k,
                   SPLIT, GATED)
        if AHEAD == 2:
            rows, words, high, scale, shift = rows1, words1, high1, scale1, shift1
            rows1, words1, high1, scale1, shift1 = next_rows, next_words, next_high, next_scale, next_shift
        else:
            rows, words, high, scale, shift = next_rows, next_words, next_high, next_scale, next_shift


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(x_ptr, xs_ptr, xsum_ptr, y_ptr, partial_ptr, arrivals_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr,
                 e_ptr, M, N, K, stride_xm, stride_ym, ROW_PROGRAMS, SPLIT,
                 FMT: tl.constexpr, BITS: tl.constexpr, A_PER: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr,
                 FP8_HW: tl.constexpr, HAS_SHIFT: tl.constexpr, Q_OFFSET: tl.constexpr, ASM: tl.constexpr,
                 PACK_X: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_M: tl.constexpr,
                 AHEAD: tl.constexpr, WIDE: tl.constexpr, WHOLE_SLICES: tl.constexpr, GATED: tl.constexpr,
                 USE_PDL: tl.constexpr):
    """One weight: a grid of (ROW_PROGRAMS, SPLIT) programs."""
    _gemv_program(tl.program_id(0), tl.program_id(1), x_ptr, xs_ptr, xsum_ptr, y_ptr, partial_ptr, arrivals_ptr,
                  q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, M, N, K, stride_xm, stride_ym, ROW_PROGRAMS, SPLIT,
                  FMT, BITS, A_PER, G, UNIT, FP8_HW, HAS_SHIFT, Q_OFFSET, ASM, PACK_X, BLOCK_N, BLOCK_U, BLOCK_M,
                  AHEAD, WIDE, WHOLE_SLICES, GATED, USE_PDL)


@triton.jit(do_not_specialize=["M"])
def _gemv_pair_kernel(M, K, stride_xm, ASM: tl.constexpr, BLOCK_M: tl.constexpr, USE_PDL: tl.constexpr,
                      x_ptr, xs_ptr, xsum_ptr, y_ptr, partial_ptr, arrivals_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr,
                      e_ptr, N, stride_ym, ROW_PROGRAMS, SPLIT, FMT: tl.constexpr, BITS: tl.constexpr,
                      A_PER: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr, FP8_HW: tl.constexpr,
                      HAS_SHIFT: tl.constexpr, Q_OFFSET: tl.constexpr, PACK_X: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_U: tl.constexpr, AHEAD: tl.constexpr, WIDE: tl.constexpr, WHOLE_SLICES: tl.constexpr,
                      GATED: tl.constexpr,
                      x2_ptr, xs2_ptr, xsum2_ptr, y2_ptr, partial2_ptr, arrivals2_ptr, q2_ptr, qh2_ptr, a2_ptr,
                      b2_ptr, d2_ptr, e2_ptr, N2, stride_ym2, ROW_PROGRAMS2, SPLIT2, FMT2: tl.constexpr,
                      BITS2: tl.constexpr, A_PER2: tl.constexpr, G2: tl.constexpr, UNIT2: tl.constexpr,
                      FP8_HW2: tl.constexpr, HAS_SHIFT2: tl.constexpr, Q_OFFSET2: tl.constexpr,
                      PACK_X2: tl.constexpr, BLOCK_N2: tl.constexpr, BLOCK_U2: tl.constexpr, AHEAD2: tl.constexpr,
                      WIDE2: tl.constexpr, WHOLE_SLICES2: tl.constexpr, GATED2: tl.constexpr):
    """Two weights of one x in one launch (the parts of a merged projection in two formats, such as Q4_K_M's
    Q4_K q/k beside its Q6_K v): a 1-D grid, the first ROW_PROGRAMS x SPLIT programs the first weight's, the
    rest the second's (the arguments ending in 2), each with the tiles of its own format."""
    pid = tl.program_id(0)
    if pid < ROW_PROGRAMS * SPLIT:
        _gemv_program(pid % ROW_PROGRAMS, pid // ROW_PROGRAMS, x_ptr, xs_ptr, xsum_ptr, y_ptr, partial_ptr,
                      arrivals_ptr, q_ptr, qh_ptr, a_ptr, b_ptr, d_ptr, e_ptr, M, N, K, stride_xm, stride_ym,
                      ROW_PROGRAMS, SPLIT, FMT, BITS, A_PER, G, UNIT, FP8_HW, HAS_SHIFT, Q_OFFSET, ASM, PACK_X,
                      BLOCK_N, BLOCK_U, BLOCK_M, AHEAD, WIDE, WHOLE_SLICES, GATED, USE_PDL)
    else:
        pid -= ROW_PROGRAMS * SPLIT
        _gemv_program(pid % ROW_PROGRAMS2, pid // ROW_PROGRAMS2, x2_ptr, xs2_ptr, xsum2_ptr, y2_ptr, partial2_ptr,
                      arrivals2_ptr, q2_ptr, qh2_ptr, a2_ptr, b2_ptr, d2_ptr, e2_ptr, M, N2, K, stride_xm,
                      stride_ym2, ROW_PROGRAMS2, SPLIT2, FMT2, BITS2, A_PER2, G2, UNIT2, FP8_HW2, HAS_SHIFT2,
                      Q_OFFSET2, ASM, PACK_X2, BLOCK_N2, BLOCK_U2, BLOCK_M, AHEAD2, WIDE2, WHOLE_SLICES2, GATED2,
                      USE_PDL)


def _packs_x(fmt: str) -> bool:
    """Whether the GEMV packs x itself: a unit is a whole group (every integer format but int4_g128's 128)."""
    return fmt != FP8 and gemv_unit_words(fmt) == group_words(fmt)


def _gemv_x(x2: torch.Tensor, fmt: str, packed: dict | None) -> tuple[torch.Tensor, ...]:
    """The GEMV's x: (x, x, x) for FP8 and where it packs x itself, pack_fixed_x's (words, scales, sums)
    otherwise."""
    if fmt == FP8 or _packs_x(fmt):
        return x2, x2, x2
    return pack_fixed_x(x2, block_format(fmt).group, packed)


def gemv_config(fmt: str, n: int, k: int, device: torch.device, gpu: bool, tiles: dict | None = None) -> dict:
    """A program's tile: BLOCK_N rows by BLOCK_U units (a few to each thread, so that x's columns lie as the words
    do), tiles (when given) overriding them; SPLIT slices of K (WHOLE_SLICES: all of BLOCK_U units), and
    ROW_PROGRAMS programs along the rows for each, about PROGRAMS_PER_SM in all a SM (tiles may set
    PROGRAMS_PER_SM too)."""
    units = row_units(fmt, k, gemv_unit_words(fmt))
    if gpu:   # scripts/gpu_quant_check.py's sweeps on one H200 at Llama-3.1-8B's shapes, at one row of x: the whole
        # of K in one slice where it fits (no partial sums to add up), one row a tile for FP8 and int4 (their packed
        # x loaded, not packed here), the integer formats' tiles above
        block_u = min(max(triton.next_power_of_2(units), 128), MAX_SLICE_UNITS)
        config = dict(BLOCK_N=1, num_warps=4, BLOCK_U=block_u, AHEAD=1)
        if _packs_x(fmt):
            config.update(_SHORT_ROW_TILES.get(fmt, _SHORT_ROW_TILE) if k <= SHORT_ROW_WEIGHTS else _LONG_ROW_TILE)
    else:     # the interpreter: few programs (its cost is per operation, whatever the tile)
        config = dict(BLOCK_N=8, num_warps=1, BLOCK_U=2, AHEAD=2)
    config.update(tiles or {})
    programs_per_sm = config.pop("PROGRAMS_PER_SM", PROGRAMS_PER_SM)
    config["SPLIT"] = triton.cdiv(units, config["BLOCK_U"])
    config["WHOLE_SLICES"] = units % config["BLOCK_U"] == 0
    row_tiles = triton.cdiv(n, config["BLOCK_N"])
    config.setdefault("ROW_PROGRAMS", max(1, min(row_tiles, programs_per_sm * sm_count(device) // config["SPLIT"])))
    return config


def gates_itself(fmt: str, n: int, k: int, device: torch.device, gpu: bool, tiles: dict | None = None) -> bool:
    """Whether the GEMV of a merged [gate; up] weight applies SiLU-and-mul in its store: where its tile holds 2
    or more rows anyway. FP8 and int4 take one row a tile, and two rows (one gate, one up) slowed them more than
    the launch it saves (Qwen3-8B FP8 batch-1 decode on one H200: 302 against 308 tok/s)."""
    return gemv_config(fmt, n, k, device, gpu, tiles)["BLOCK_N"] >= 2


def _part(x2: torch.Tensor, planes: dict, fmt: str, y: torch.Tensor, n: int, config: dict, packed_x: dict | None,
          gated: bool, workspace: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """One weight's arguments of _gemv_kernel by name, but for M, K and stride_xm (x's, shared by a pair's two
    weights) and BLOCK_M: x's whole rows, y, the split-K workspace, the planes, the format's constants and its
    tiles (config: gemv_config's, num_warps included)."""
    x_words, x_scales, x_sums = _gemv_x(x2, fmt, packed_x)
    fmt_constants = dict(constants(fmt, x2), UNIT=gemv_unit_words(fmt), PACK_X=_packs_x(fmt),
                         **int_constants(fmt, x2))
    part = dict(zip(("x_ptr", "xs_ptr", "xsum_ptr", "y_ptr", "partial_ptr", "arrivals_ptr", "q_ptr", "qh_ptr",
                     "a_ptr", "b_ptr", "d_ptr", "e_ptr"),
                    (x_words, x_scales, x_sums, y, *workspace, *kernel_planes(planes, fmt))),
                N=n // 2 if gated else n, stride_ym=y.stride(0), GATED=gated, **fmt_constants,
                WIDE=max(plane.numel() for plane in planes.values()) >= 2 ** 31)
    part.update(config)     # tiles may force WIDE
    return part


def _config(fmt: str, n: int, k: int, device: torch.device, gpu: bool, tiles: dict | None) -> dict:
    """gemv_config's tiles and PARTIALS, the split-K workspace's float32 sums they need."""
    config = gemv_config(fmt, n, k, device, gpu, tiles)
    config["PARTIALS"] = triton.cdiv(n, config["BLOCK_N"]) * config["SPLIT"] * 2 * config["BLOCK_N"]
    return config


def _rows_of_x(part: dict, first: int, rows: int) -> dict:
    """part's arguments with x's tensors and y narrowed to rows first .. first + rows."""
    shifted = dict(part)
    for name in ("x_ptr", "xs_ptr", "xsum_ptr", "y_ptr"):
        shifted[name] = part[name][first:first + rows]
    return shifted


def quant_gemv(x2: torch.Tensor, planes: dict, fmt: str, y: torch.Tensor, n: int, k: int, gpu: bool,
               tiles: dict | None, packed_x: dict | None, gated: bool = False) -> None:
    """y [M, N] = x2 [M, K] @ W^T (quant_matmul.quant_matmul's arguments), or with gated y [M, N / 2] =
    silu(x2 @ W[:N / 2]^T) * (x2 @ W[N / 2:]^T): a launch for each two rows of x, which cost a program about what
    one does (x packed once for all, by the GEMV itself where a unit is a group)."""
    config = _config(fmt, n, k, x2.device, gpu, tiles)
    assert not gated or config["BLOCK_N"] >= 2, "a gated tile holds gate and up rows (gates_itself)"
    workspace = SplitWorkspace.get(x2.device, config.pop("PARTIALS"), triton.cdiv(n, config["BLOCK_N"]))
    part = _part(x2, planes, fmt, y, n, config, packed_x, gated, workspace)
    grid = (part["ROW_PROGRAMS"], part["SPLIT"])
    for first in range(0, x2.shape[0], 2):
        rows = min(2, x2.shape[0] - first)
        _gemv_kernel[grid](**_rows_of_x(part, first, rows), M=rows, K=k, stride_xm=x2.stride(0),
                           BLOCK_M=rows, **pdl_options(x2.device))


def quant_gemv_pair(x2: torch.Tensor, weights: list[tuple[dict, str, torch.Tensor]], k: int, gpu: bool,
                    packed_x: dict | None) -> bool:
    """The GEMVs y_i = x2 @ W_i^T of two weights (planes, format, y_i) in one launch per two rows of x
    (_gemv_pair_kernel): the programs one GEMV of the larger would have, shared by the weights' bytes. False
    (nothing launched) where their tiles need different warps a program."""
    n = [planes["q"].shape[0] for planes, _, _ in weights]
    configs = [_config(fmt, rows, k, x2.device, gpu, None) for (_, fmt, _), rows in zip(weights, n)]
    if configs[0]["num_warps"] != configs[1]["num_warps"]:
        return False
    weight_bytes = [sum(p.numel() * p.element_size() for p in planes.values()) for planes, _, _ in weights]
    programs = max(c["ROW_PROGRAMS"] * c["SPLIT"] for c in configs)
    for config, nbytes, rows in zip(configs, weight_bytes, n):
        row_tiles = triton.cdiv(rows, config["BLOCK_N"])
        share = round(programs * nbytes / sum(weight_bytes)) // config["SPLIT"]
        config["ROW_PROGRAMS"] = max(1, min(row_tiles, share))
    partials = [c.pop("PARTIALS") for c in configs]
    tiles = [triton.cdiv(rows, c["BLOCK_N"]) for c, rows in zip(configs, n)]
    partial, arrivals = SplitWorkspace.get(x2.device, sum(partials), sum(tiles))
    first = _part(x2, *weights[0], n[0], configs[0], packed_x, False, (partial, arrivals))
    second = _part(x2, *weights[1], n[1], configs[1], packed_x, False,
                   (partial[partials[0]:], arrivals[tiles[0]:]))
    warps = first.pop("num_warps")
    second.pop("num_warps")
    grid = (first["ROW_PROGRAMS"] * first["SPLIT"] + second["ROW_PROGRAMS"] * second["SPLIT"],)
    for row in range(0, x2.shape[0], 2):
        rows = min(2, x2.shape[0] - row)
        named = {**_rows_of_x(first, row, rows),
                 **{_second(name): value for name, value in _rows_of_x(second, row, rows).items()
                    if name != "ASM"}}
        _gemv_pair_kernel[grid](**named, M=rows, K=k, stride_xm=x2.stride(0), BLOCK_M=rows, num_warps=warps,
                                **pdl_options(x2.device))
    return True


def _second(name: str) -> str:
    """The name of a _gemv_pair_kernel argument of its second weight."""
    return name[:-4] + "2_ptr" if name.endswith("_ptr") else name + "2"
