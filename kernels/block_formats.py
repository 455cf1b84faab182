"""The quantized block formats (plain data, no torch, so that any part of localllm may name and size them).

In checkpoints and on the CPU a [N, K] weight in one of them is uint8 [N, K / elems * nbytes]: each row is K / elems
blocks of `nbytes` bytes, each block `elems` consecutive weights of that row; quant_blocks_ref decodes them.

On a GPU the same weight is repacked at load into planes (PLANES, quant_planes_ref): per row, the quants of the row
contiguous in int32 words (nibbles or bytes in the order of the weights), the extra high bits of Q5_K / Q6_K in a
word plane of their own, and each scale field in an array of its own, so that the kernels read every plane with wide
aligned loads. The planes hold the very fields of the blocks (nothing is rounded), in about the same bytes."""
from __future__ import annotations

from dataclasses import dataclass

QK_K = 256


@dataclass(frozen=True)
class BlockFormat:
    name: str
    elems: int      # weights per block
    nbytes: int     # bytes per block
    group: int      # weights sharing one scale (the kernels decode a group's scale once)


BLOCK_FORMATS = {f.name: f for f in (
    BlockFormat("Q4_0", 32, 18, 32),        # f16 d, 16 x (2 nibbles): w = d * (q - 8)
    BlockFormat("Q4_1", 32, 20, 32),        # f16 d, f16 m, 16 x (2 nibbles): w = d * q + m
    BlockFormat("Q8_0", 32, 34, 32),        # f16 d, 32 x int8: w = d * q
    BlockFormat("Q4_K", QK_K, 144, 32),     # f16 d, f16 dmin, 12 B of 6-bit scales/mins, 128 B nibbles
    BlockFormat("Q5_K", QK_K, 176, 32),     # as Q4_K, plus 32 B of fifth bits before the nibbles
    BlockFormat("Q6_K", QK_K, 210, 16),     # 128 B low nibbles, 64 B 2-bit highs, 16 x int8 scales, f16 d
    # AWQ/GPTQ int4 repacked (see localllm.loader.int4): f16 scale, u8 zero, 1 pad byte, 64 B nibbles
    # (byte i holds weights i and i + 64); w = (q - zero) * scale
    BlockFormat("int4_g128", 128, 68, 32),
    # FP8 checkpoints (localllm.loader.fp8) and --quantize fp8: f32 scale, then 128 float8_e4m3fn weights;
    # w = fp8 * scale. Per-tensor, per-channel and 128x128-tile scales all fit it exactly.
    BlockFormat("fp8_e4m3_g128", 128, 132, 32),
)}


@dataclass(frozen=True)
class Plane:
    """One array of a weight's GPU layout: [N, K / per] elements of `dtype` (a torch dtype's name). A word plane
    (dtype int32, bits > 0) packs E = 32 / bits weights a word, group by group (BlockFormat.group weights, C =
    group / E words): word c of a group holds its weight j * C + c at bits j * bits, so that bits j of consecutive
    words multiply consecutive columns of x. (Q5_K's and Q6_K's high-bit planes have one word a group: plain order.)"""
    name: str
    dtype: str
    per: int        # weights per element along a row
    bits: int = 0


def _words(name: str, bits: int) -> Plane:
    return Plane(name, "int32", 32 // bits, bits)


_K_SCALES = (Plane("sc", "uint8", 32), Plane("mn", "uint8", 32), Plane("d", "float16", QK_K),
             Plane("dmin", "float16", QK_K))
# The planes of each format, named after the fields of its blocks (quant_blocks_ref.block_fields): q the low 4 (or
# all 8) bits of every quant, qh the bits above them, d / m / sc / mn / dmin / zero the scale fields.
PLANES = {
    "Q4_0": (_words("q", 4), Plane("d", "float16", 32)),
    "Q4_1": (_words("q", 4), Plane("d", "float16", 32), Plane("m", "float16", 32)),
    "Q8_0": (_words("q", 8), Plane("d", "float16", 32)),
    "Q4_K": (_words("q", 4), *_K_SCALES),
    "Q5_K": (_words("q", 4), _words("qh", 1), *_K_SCALES),
    "Q6_K": (_words("q", 4), _words("qh", 2), Plane("sc", "int8", 16), Plane("d", "float16", QK_K)),
    "int4_g128": (_words("q", 4), Plane("d", "float16", 128), Plane("zero", "uint8", 128)),
    "fp8_e4m3_g128": (_words("q", 8), Plane("d", "float32", 128)),
}
PLANE_ALIGN = 16    # bytes: every plane starts on a 16-byte boundary (the kernels load 16-byte vectors)
_ITEMSIZE = {"int32": 4, "float32": 4, "float16": 2, "uint8": 1, "int8": 1}

# the GGUF tensor types kept as blocks (the others are dequantized at load)
GGUF_BLOCK_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")


def block_format(name: str) -> BlockFormat:
    if name not in BLOCK_FORMATS:
        raise ValueError(f"unknown block format {name!r} (known: {', '.join(BLOCK_FORMATS)})")
    return BLOCK_FORMATS[name]


def row_bytes(fmt: str, cols: int) -> int:
    """Bytes of one row of `cols` weights; cols must be whole blocks."""
    f = block_format(fmt)
    if cols % f.elems:
        raise ValueError(f"{cols} columns are not whole {fmt} blocks of {f.elems}")
    return cols // f.elems * f.nbytes


def plane_bytes(plane: Plane, rows: int, cols: int) -> int:
    """Bytes of one plane of a [rows, cols] weight, padded to PLANE_ALIGN."""
    nbytes = rows * (cols // plane.per) * _ITEMSIZE[plane.dtype]
    return -(-nbytes // PLANE_ALIGN) * PLANE_ALIGN


def planes_bytes(fmt: str, rows: int, cols: int) -> int:
    """Bytes of a [rows, cols] weight in its GPU layout (cols whole blocks)."""
    row_bytes(fmt, cols)
    return sum(plane_bytes(p, rows, cols) for p in PLANES[fmt])
