"""The quantized block formats the kernels read (plain data, no torch, so that any part of localllm may name and
size them). A [N, K] weight in one of them is uint8 [N, K / elems * nbytes]: each row is K / elems blocks of
`nbytes` bytes, each block `elems` consecutive weights of that row; quant_blocks_ref decodes them."""
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
