"""Weights kept as quantized blocks (localllm.kernels.quant_blocks_ref describes the formats).

A layer's weight [rows, cols] is either dense (the model dtype) or a flat uint8 buffer holding one or more parts:
consecutive rows stored in one block format each. A merged projection whose checkpoint tensors use different
formats (llama.cpp's Q4_K_M stores attn_v in Q6_K beside a Q4_K attn_q) keeps one part per format; each part is
multiplied by its own kernel launch into its columns of the output. Rows are whole blocks along the input dimension,
so a tensor-parallel rank's columns must be whole blocks too (checked when the layout is planned).

On a GPU each part is repacked as it is stored (after any tensor-parallel slicing) into planes, the layout the
Triton kernels of localllm.kernels.quant_matmul read (block_formats.PLANES: the same fields, about the same bytes);
elsewhere the block rows stay as they are and each matmul dequantizes its weight (to exactly the values a dense
conversion would hold) and multiplies with torch.

Layers are built with their weights deferred (on the meta device, nothing allocated) and then placed: each gets a
dense tensor or a block layout, so a model whose dense form does not fit in memory never allocates it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from localllm.kernels.block_formats import block_format, planes_bytes, row_bytes
from localllm.kernels.quant_blocks_ref import dequantize_ref
from localllm.kernels.quant_planes_ref import dequantize_planes_ref, pack_planes, plane_views
from localllm.kernels.quantize_ref import quantize_ref
from localllm.layers.shards import shape_of

_deferred = False
# weights repacked into planes at a time when a part is stored (the transient memory of packing: ~4 bytes a weight)
PACK_WEIGHTS = 1 << 24


@contextlib.contextmanager
def deferred_weights():
    """Layers built inside make their weights on the meta device; place_weights gives them real storage."""
    global _deferred
    previous, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = previous


def new_weight(rows: int, cols: int) -> nn.Parameter:
    """A layer's [rows, cols] weight: on the current device, or on meta while weights are deferred."""
    return nn.Parameter(torch.empty(rows, cols, device="meta" if _deferred else None), requires_grad=False)


@dataclass(frozen=True)
class Part:
    fmt: str
    first_row: int
    rows: int
    offset: int      # in bytes, into the layer's flat buffer
    nbytes: int      # its block rows, or its planes


@dataclass(frozen=True)
class BlockLayout:
    """packed: the part's rows are kept as planes, the GPU layout the kernels read (quant_planes_ref), instead of
    the block rows of the checkpoint (the CPU's: dequantized by torch for each matmul)."""
    rows: int
    cols: int
    parts: tuple[Part, ...]
    packed: bool = False

    @classmethod
    def of(cls, rows: int, cols: int, spans: list[tuple[int, int, str]], packed: bool = False) -> BlockLayout:
        """From (first row, row count, format) spans covering all rows; neighbouring spans of one format merge."""
        merged: list[list] = []
        for first, count, fmt in sorted(spans):
            if merged and merged[-1][2] == fmt and merged[-1][0] + merged[-1][1] == first:
                merged[-1][1] += count
            else:
                merged.append([first, count, fmt])
        parts, offset = [], 0
        for first, count, fmt in merged:
            nbytes = planes_bytes(fmt, count, cols) if packed else count * row_bytes(fmt, cols)
            parts.append(Part(fmt, first, count, offset, nbytes))
            offset += nbytes
        if sum(p.rows for p in parts) != rows:
            raise ValueError(f"block layout spans cover {sum(p.rows for p in parts)} of {rows} rows")
        return cls(rows, cols, tuple(parts), packed)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    @property
    def formats(self) -> list[str]:
        return [p.fmt for p in self.parts]

    def blocks(self, weight: torch.Tensor, part: Part) -> torch.Tensor:
        """The block rows [rows, row bytes] of `part` (an unpacked layout's: the CPU's)."""
        assert not self.packed, "a packed layout holds planes, not block rows"
        return weight[part.offset:part.offset + part.nbytes].view(part.rows, part.nbytes // part.rows)

    def _planes(self, weight: torch.Tensor, part: Part) -> dict[str, torch.Tensor]:
        return plane_views(weight[part.offset:part.offset + part.nbytes], part.fmt, part.rows, self.cols)

    def write_rows(self, weight: torch.Tensor, part: Part, start: int, blocks: torch.Tensor) -> None:
        """Stores block rows [count, row bytes] as rows start.. of `part` (repacked into planes when packed)."""
        count = blocks.shape[0]
        if not self.packed:
            self.blocks(weight, part)[start:start + count].copy_(blocks)
            return
        views = self._planes(weight, part)
        step = max(1, PACK_WEIGHTS // self.cols)     # packing takes a few bytes a weight: bounded, not per tensor
        for first in range(0, count, step):
            planes = pack_planes(blocks[first:first + step].to(weight.device), part.fmt)
            for name, view in views.items():
                view[start + first:start + first + len(planes[name])].copy_(planes[name])

    def _dequantize_part(self, weight: torch.Tensor, part: Part, index=slice(None)) -> torch.Tensor:
        if self.packed:
            return dequantize_planes_ref({k: v[index] for k, v in self._planes(weight, part).items()}, part.fmt)
        return dequantize_ref(self.blocks(weight, part)[index], part.fmt)

    def part_of(self, first_row: int, count: int) -> Part:
        for part in self.parts:
            if part.first_row <= first_row and first_row + count <= part.first_row + part.rows:
                return part
        raise ValueError(f"rows {first_row}..{first_row + count} straddle parts of a block layout")

    def dequantize(self, weight: torch.Tensor) -> torch.Tensor:
        """float32 [rows, cols]."""
        return torch.cat([self._dequantize_part(weight, p) for p in self.parts])

    def matmul(self, x: torch.Tensor, weight: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """x [..., cols] @ W^T -> [..., rows]: the Triton kernels over the planes; block rows are dequantized
        first (the same weights a dense conversion holds, so the same results). gated (planes only; W a merged
        [gate; up]): silu(gate) * up -> [..., rows / 2], inside the GEMV where it runs."""
        if not self.packed:
            assert not gated, "gated: planes only"
            return F.linear(x, self.dequantize(weight).to(x.dtype))
        from localllm.kernels.activation import silu_and_mul
        from localllm.kernels.quant_matmul import merged_matmul, quant_matmul

        if len(self.parts) == 1:
            return quant_matmul(x, self._planes(weight, self.parts[0]), self.parts[0].fmt, gated=gated)
        x2 = x.reshape(-1, self.cols)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        y = torch.empty((x2.shape[0], self.rows), dtype=x.dtype, device=x.device)
        merged_matmul(x2, [(self._planes(weight, p), p.fmt, y[:, p.first_row:p.first_row + p.rows])
                           for p in self.parts], {})
        y = y.reshape(*x.shape[:-1], self.rows)
        return silu_and_mul(y) if gated else y

    def rows_of(self, weight: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dequantized rows [*index.shape, cols] in dtype (float32 rounded to it): an embedding lookup, by the
        dequantize kernel where the weight is planes."""
        assert len(self.parts) == 1, "an embedding is one tensor"
        part = self.parts[0]
        if not self.packed:
            return self._dequantize_part(weight, part, index).to(dtype)
        from localllm.kernels.quant_matmul import dequantize_rows

        flat = index.reshape(-1)
        out = torch.empty((flat.numel(), self.cols), dtype=dtype, device=weight.device)
        dequantize_rows(self._planes(weight, part), part.fmt, 0, flat.numel(), out, index=flat)
        return out.view(*index.shape, self.cols)


class BlockSource:
    """A checkpoint tensor held as block rows: raw uint8 [N, K / elems * nbytes] (a torch tensor or a safetensors
    slice) in format `fmt`, indexed by weights as a dense [N, K] tensor would be (shards.rows / columns), so a
    rank reads only its rows or its whole blocks of columns."""

    def __init__(self, raw, fmt: str, cols: int):
        self.raw, self.fmt, self.cols = raw, fmt, cols

    @classmethod
    def of_rows(cls, raw, fmt: str) -> BlockSource:
        f = block_format(fmt)
        return cls(raw, fmt, shape_of(raw)[1] // f.nbytes * f.elems)

    @property
    def shape(self) -> tuple[int, int]:
        return shape_of(self.raw)[0], self.cols

    def __getitem__(self, index) -> BlockSource:
        if isinstance(index, slice):
            return BlockSource(self.raw[index], self.fmt, self.cols)
        rows, cols = index
        f = block_format(self.fmt)
        start, stop = cols.start or 0, self.cols if cols.stop is None else cols.stop
        if start % f.elems or stop % f.elems:
            raise ValueError(f"columns {start}..{stop} are not whole {self.fmt} blocks of {f.elems} weights")
        raw = self.raw[rows, start // f.elems * f.nbytes:stop // f.elems * f.nbytes]
        return BlockSource(raw, self.fmt, stop - start)

    def blocks(self) -> torch.Tensor:
        return self.raw if isinstance(self.raw, torch.Tensor) else self.raw[:]

    def dequantized(self) -> torch.Tensor:
        return dequantize_ref(self.blocks(), self.fmt)


def dense_values(src) -> torch.Tensor:
    """A loaded checkpoint part as dense values (block rows dequantized)."""
    return src.dequantized() if isinstance(src, BlockSource) else src


def store_rows(module: nn.Module, first_row: int, src) -> None:
    """Writes a checkpoint part (dense, or BlockSource rows) into rows first_row.. of module.weight, converting it
    to the layer's storage: dequantized for a dense weight, its blocks as they are for a part of the same format,
    (re)quantized otherwise."""
    layout: BlockLayout | None = getattr(module, "layout", None)
    count = src.shape[0]
    if layout is None:
        module.weight.data[first_row:first_row + count].copy_(dense_values(src))
        return
    part = layout.part_of(first_row, count)
    if isinstance(src, BlockSource) and src.fmt == part.fmt:
        blocks = src.blocks()
    else:
        blocks = quantize_ref(dense_values(src).to(module.weight.device), part.fmt)
    layout.write_rows(module.weight.data, part, first_row - part.first_row, blocks)


def apply_weight(x: torch.Tensor, module: nn.Module, bias: torch.Tensor | None = None,
                 act: nn.Module | None = None) -> torch.Tensor:
    """act(x @ module.weight^T (+ bias)), whatever the weight's storage. act: the MLP's SiluAndMul of a merged
    gate/up weight, which a weight kept as planes applies inside its GEMV (no launch of its own)."""
    layout = getattr(module, "layout", None)
    cpu_matmul = getattr(module, "cpu_matmul", None)   # layers.cpu_quant, on the CPU's fast path
    if layout is None:
        y = F.linear(x, module.weight, bias)
    elif cpu_matmul is None and layout.packed and act is not None and bias is None:
        return layout.matmul(x, module.weight, gated=True)
    else:
        y = cpu_matmul(x) if cpu_matmul is not None else layout.matmul(x, module.weight)
        y = y if bias is None else y + bias
    return act(y) if act is not None else y


def place_weights(model: nn.Module, spans_of: dict[str, list[tuple[int, int, str]]], device: torch.device,
                  dtype: torch.dtype, packed: bool | None = None) -> None:
    """Gives every deferred weight its storage: a block layout for the modules in spans_of (module name ->
    (first row, rows, format) spans), dense in `dtype` for the others. A weight shared by two modules (tied
    embeddings) stays shared. packed: block layouts kept as planes (BlockLayout.packed); by default on a CUDA
    device, where the kernels run."""
    packed = device.type == "cuda" if packed is None else packed
    placed: dict[int, tuple[nn.Parameter, BlockLayout | None]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "shard_rows") or not weight.is_meta:   # not a layer of new_weight's
            continue
        if id(weight) not in placed:
            rows, cols = weight.shape
            layout = BlockLayout.of(rows, cols, spans_of[name], packed) if name in spans_of else None
            storage = (torch.zeros(layout.nbytes, dtype=torch.uint8, device=device) if layout is not None
                       else torch.empty(rows, cols, dtype=dtype, device=device))
            placed[id(weight)] = (nn.Parameter(storage, requires_grad=False), layout)
        module.weight, module.layout = placed[id(weight)]


@torch.no_grad()
def randomize_weights(model: nn.Module, std: float = 0.02, chunk_weights: int = 1 << 22) -> None:
    """Random weights for speed benchmarks: matrices ~ N(0, std) (quantized ones drawn dense, about chunk_weights
    at a time so that the transient memory stays small, then quantized into their blocks), vectors (norms,
    biases) 1."""
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            layout = getattr(module, "layout", None) if param is getattr(module, "weight", None) else None
            if layout is not None:
                for part in layout.parts:
                    rows_per_chunk = max(1, chunk_weights // layout.cols)
                    for start in range(0, part.rows, rows_per_chunk):
                        rows = min(rows_per_chunk, part.rows - start)
                        dense = torch.randn(rows, layout.cols, device=param.device) * std
                        layout.write_rows(param.data, part, start, quantize_ref(dense, part.fmt))
            elif param.dim() > 1:
                param.data.normal_(0.0, std)
            else:
                param.data.fill_(1.0)
