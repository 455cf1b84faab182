"""Quantized matmuls on the CPU without a float32 copy of the weights (`--quantize fast`, localllm.quantization).

Q4_0 and Q4_1 parts are repacked once, at load, into torch's CPU int4 layout
(`aten._convert_weight_to_int4pack_for_cpu`: 4-bit weights with a scale and a zero per 32 of them, 0.625 bytes a
weight, as the GGUF blocks) and multiplied by `aten._weight_int4pack_mm_for_cpu`, whose kernel dequantizes inside
the GEMV. That kernel computes w = (q - 8) * scale + zero, so Q4_1 (w = d * q + m) becomes scale d, zero m + 8d,
and Q4_0 (w = d * (q - 8)) scale d, zero 0. It is fast only with bfloat16 activations, scales and outputs (its
float32 and float16 paths are 10-50x slower on AVX2), so x is rounded to bfloat16 on the way in and the product
comes back as float32: not bit-exact, which is why `quantization=none` (dense float32) stays the exact path.
Other formats (the Q8_0 tied embedding / LM head of the embedded model, K-quants) are multiplied as a dense
bfloat16 copy, half the bytes of float32. The blocks themselves stay for embedding lookups.
"""
from __future__ import annotations

import torch
from torch import nn

from localllm.kernels.quant_blocks_ref import dequantize_ref
from localllm.layers.quantized import BlockLayout

INT4_FORMATS = ("Q4_0", "Q4_1")
_GROUP = 32
_N_MULTIPLE = 16   # the int4 packing holds whole tiles of 16 output rows


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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, _GROUP, self.scales_zeros)


class DensePart:
    """A part whose format has no CPU kernel: its weights dequantized once to bfloat16."""

    def __init__(self, blocks: torch.Tensor, fmt: str, cols: int):
        self.weight = dequantize_ref(blocks, fmt).to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)


class CpuQuantMatmul:
    """x [..., cols] @ W^T for a layer kept as blocks, one kernel per part, float32 out."""

    def __init__(self, layout: BlockLayout, weight: torch.Tensor):
        self.rows, self.cols = layout.rows, layout.cols
        self.parts = [(Int4Part if p.fmt in INT4_FORMATS and p.rows % _N_MULTIPLE == 0 else DensePart)
                      (layout.blocks(weight, p), p.fmt, layout.cols) for p in layout.parts]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.cols).to(torch.bfloat16)
        outs = [part(x2) for part in self.parts]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.rows)


def attach_cpu_kernels(model: nn.Module) -> int:
    """Gives every CPU layer kept as blocks its CpuQuantMatmul (layers.quantized.apply_weight uses it); returns
    how many layers got one. A weight shared by two modules (tied embedding and LM head) is repacked once."""
    made: dict[int, CpuQuantMatmul] = {}
    for module in model.modules():
        layout = getattr(module, "layout", None)
        if layout is None or module.weight.is_cuda:
            continue
        key = id(module.weight)
        if key not in made:
            made[key] = CpuQuantMatmul(layout, module.weight.data)
        module.cpu_matmul = made[key]
    return len(made)
