"""The GPU layout of quantized weights in plain torch: a [N, K] weight of block rows repacked into planes
(block_formats.PLANES) and back, and planes_matmul_ref, the ground truth of quant_matmul's Triton kernels.

Planes are a dict name -> tensor [..., K / plane.per], one row per weight row, so that a row of the matrix (an
embedding lookup, a tensor-parallel shard) is a row of every plane. They hold the fields of the blocks unchanged
(quant_blocks_ref.block_fields): dequantize_planes_ref gives bit for bit what dequantize_ref gives of the blocks, on
any device. A layer keeps all its planes in one flat uint8 buffer (plane_views).
"""
from __future__ import annotations

import torch

from localllm.kernels.block_formats import PLANES, block_format, plane_bytes
from localllm.kernels.quant_blocks_ref import block_fields, field_values

Planes = dict[str, torch.Tensor]


def _swap_within_groups(values: torch.Tensor, outer: int, inner: int) -> torch.Tensor:
    """[..., K] seen as groups of [outer, inner] -> the same groups as [inner, outer]."""
    grouped = values.reshape(*values.shape[:-1], -1, outer, inner).transpose(-1, -2)
    return grouped.reshape(values.shape)


def _pack_bits(values: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """uint8 [..., K] values below 2^bits -> int32 words [..., K * bits / 32]: in each group of `group` weights,
    with E = 32 / bits weights a word and C = group / E words, word c holds weight j * C + c at bits j * bits
    (so that bits j of consecutive words meet consecutive columns of x)."""
    per_word = 32 // bits
    values = _swap_within_groups(values, per_word, group // per_word)
    per_byte = 8 // bits
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=values.device)
    grouped = values.reshape(*values.shape[:-1], -1, per_byte) << shifts
    packed = grouped[..., 0]
    for i in range(1, per_byte):
        packed = packed | grouped[..., i]
    return packed.contiguous().view(torch.int32)


def _unpack_bits(words: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """_pack_bits undone: int32 [..., W] -> uint8 [..., W * 32 / bits]."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=words.device)
    values = (words.contiguous().view(torch.uint8).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    per_word = 32 // bits
    return _swap_within_groups(values.reshape(*words.shape[:-1], -1), group // per_word, per_word)


def pack_planes(raw: torch.Tensor, fmt: str) -> Planes:
    """uint8 [N, K / elems * nbytes] block rows -> the planes of the same weights (on raw's device)."""
    f = block_format(fmt)
    rows = raw.shape[0]
    fields = block_fields(raw.reshape(-1, f.nbytes), fmt)
    planes = {}
    for plane in PLANES[fmt]:
        field = fields[plane.name].reshape(rows, -1)
        planes[plane.name] = _pack_bits(field, plane.bits, f.group) if plane.bits else field.contiguous()
    return planes


def planes_fields(planes: Planes, fmt: str) -> dict[str, torch.Tensor]:
    """Planes [..., per row] -> the fields of their blocks, [blocks, count per block] (block_fields' form)."""
    f = block_format(fmt)
    fields = {}
    for plane in PLANES[fmt]:
        values = _unpack_bits(planes[plane.name], plane.bits, f.group) if plane.bits else planes[plane.name]
        per_block = f.elems // plane.per if not plane.bits else f.elems
        fields[plane.name] = values.reshape(-1, per_block)
    return fields


def dequantize_planes_ref(planes: Planes, fmt: str) -> torch.Tensor:
    """Planes with rows [..., *] -> the weights, float32 [..., K]; bit for bit dequantize_ref of the blocks."""
    q = planes["q"]
    k = q.shape[-1] * PLANES[fmt][0].per
    return field_values(planes_fields(planes, fmt), fmt).reshape(*q.shape[:-1], k)


def planes_matmul_ref(x: torch.Tensor, planes: Planes, fmt: str) -> torch.Tensor:
    """y = x @ W^T: W dequantized to float32, rounded to x's dtype, multiplied in x's dtype (as
    quant_blocks_ref.quant_matmul_ref does from the blocks)."""
    return torch.nn.functional.linear(x, dequantize_planes_ref(planes, fmt).to(x.dtype))


def plane_views(buffer: torch.Tensor, fmt: str, rows: int, cols: int) -> Planes:
    """The planes of a [rows, cols] weight laid out one after the other in a flat uint8 buffer (views, no copy);
    block_formats.planes_bytes(fmt, rows, cols) bytes."""
    planes, offset = {}, 0
    for plane in PLANES[fmt]:
        dtype = getattr(torch, plane.dtype)
        count = rows * (cols // plane.per)
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        planes[plane.name] = buffer[offset:offset + nbytes].view(dtype).view(rows, cols // plane.per)
        offset += plane_bytes(plane, rows, cols)
    return planes

