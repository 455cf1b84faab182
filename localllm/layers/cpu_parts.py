"""Quantized matmuls on the CPU without a float32 copy of the weights (`--quantize fast`, localllm.quantization),
layer by layer: layers.cpu_quant gives each layer kept as blocks its CpuQuantMatmul.

With the compiled kernels (localllm.cpu_kernels, built on first use with the system's C compiler), Q4_0, Q4_1 and
Q8_0 parts are multiplied straight from their GGUF blocks (CompiledPart: float32 in and out, x rounded to int16 per
32 values inside the kernel: a relative error of the products below 2e-4, against ~4e-3 with bfloat16 x), a
prefill-sized x (64 rows or more) by tiles that decode each block once for many rows of x (cpu_kernels/quant_gemm.c:
1.2-1.3x torch's float32 GEMM over the dequantized part; a CPU without AVX2 dequantizes the part exactly into a
float32 scratch and multiplies with torch instead). Other formats run as a float32 copy (exact).

Without them (no compiler, or LOCALLLM_CPU_KERNELS=0) Q4_0 and Q4_1 parts are repacked once, at load, into torch's
CPU int4 layout (`aten._convert_weight_to_int4pack_for_cpu`: 4-bit weights with a scale and a zero per 32 of them)
and multiplied by `aten._weight_int4pack_mm_for_cpu`. That kernel computes w = (q - 8) * scale + zero, so Q4_1
(w = d * q + m) becomes scale d, zero m + 8d, and Q4_0 (w = d * (q - 8)) scale d, zero 0. It is fast only with
bfloat16 activations, scales and outputs, so x is rounded to bfloat16 on the way in: not bit-exact. Other formats
then run as a dense bfloat16 copy, half the bytes of float32. The blocks themselves stay for embedding lookups.
"""
from __future__ import annotations

import torch

from localllm.cpu_kernels import ops
from localllm.kernels.quant_blocks_ref import dequantize_ref
from localllm.layers.quantized import BlockLayout

INT4_FORMATS = ("Q4_0", "Q4_1")
_GROUP = 32
_N_MULTIPLE = 16   # the int4 packing holds whole tiles of 16 output rows
# without the tiled kernel (a CPU without AVX2): rows of x up to which the compiled kernel multiplies from the
# blocks; beyond, dequantizing once and multiplying with torch's GEMM is faster
GEMV_MAX_ROWS = 32


def _f16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    return blocks[:, :, offset:offset + 2].contiguous().view(torch.float16).squeeze(-1).float()


class Int4Part:
    """One block part in torch's CPU int4 layout."""

    def __init__(self, blocks: torch.Tensor, fmt: str, cols: int):
        rows = blocks.shape[0]
        blocks = blocks.view(rows, cols // _GROUP, -1)
        qs = blocks[:, :, 2 if fmt == "Q4_0" else 4:]
        # GGUF keeps the low nibbles of a block's 16 bytes as weights 0-15 and the high ones as 16-31
        q = torch.cat((qs & 0x0F, qs >> 4), dim=-1).reshape(rows, cols).to(torch.int32)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
        d = _f16_field(blocks, 0)
        zero = torch.zeros_like(d) if fmt == "Q4_0" else _f16_field(blocks, 2) + 8 * d
        self.scales_zeros = torch.stack((d, zero), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, _GROUP, self.scales_zeros))


def _matmul_into(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    """out = x @ weight^T, out possibly a column slice of a wider output."""
    if out.is_contiguous():
        torch.matmul(x, weight.T, out=out)
    else:
        out.copy_(x @ weight.T)


class DensePart:
    """A part whose format has no CPU kernel: its weights dequantized once, to x's dtype."""

    def __init__(self, blocks: torch.Tensor, fmt: str, cols: int, dtype: torch.dtype = torch.bfloat16):
        self.weight = dequantize_ref(blocks, fmt).to(dtype)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        _matmul_into(x, self.weight, out)


class CompiledPart:
    """A part multiplied from its blocks by the compiled kernels (the blocks are a view: nothing is copied)."""

    def __init__(self, blocks: torch.Tensor, fmt: str, cols: int, lib):
        self.blocks, self.fmt, self.cols, self.lib = blocks, fmt, cols, lib
        self.tiled = ops.tiled_gemm(lib)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        if self.tiled or x.shape[0] <= GEMV_MAX_ROWS:
            ops.matmul(self.lib, x, self.blocks, self.fmt, out)
        else:
            _matmul_into(x, ops.dequantize(self.lib, self.blocks, self.fmt, self.cols), out)


def _part(layout: BlockLayout, weight: torch.Tensor, part, lib):
    blocks = layout.blocks(weight, part)
    if lib is not None:
        if part.fmt in ops.FORMATS:
            return CompiledPart(blocks, part.fmt, layout.cols, lib)
        return DensePart(blocks, part.fmt, layout.cols, torch.float32)
    if part.fmt in INT4_FORMATS and part.rows % _N_MULTIPLE == 0:
        return Int4Part(blocks, part.fmt, layout.cols)
    return DensePart(blocks, part.fmt, layout.cols)


class CpuQuantMatmul:
    """x [..., cols] @ W^T for a layer kept as blocks, one kernel per part into its columns of the output; lib: the
    compiled kernels (build.library()), or None for torch's."""

    def __init__(self, layout: BlockLayout, weight: torch.Tensor, lib=None):
        self.rows, self.cols = layout.rows, layout.cols
        self.dtype = torch.float32 if lib is not None else torch.bfloat16   # what the parts take and give
        self.parts = [(_part(layout, weight, p, lib), p.first_row, p.rows) for p in layout.parts]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.cols).to(self.dtype).contiguous()
        y = torch.empty(x2.shape[0], self.rows, dtype=self.dtype)
        for part, first, rows in self.parts:
            part(x2, y[:, first:first + rows] if len(self.parts) > 1 else y)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.rows)
