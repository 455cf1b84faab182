"""The CPU parts of layers kept as blocks without the compiled kernels (layers.cpu_parts: torch's int4 kernel): the
same products as dequantize-then-matmul, within the bfloat16 rounding of their inputs and outputs."""
from __future__ import annotations

import pytest
import torch

from localllm.kernels.quant_blocks_ref import dequantize_ref
from localllm.kernels.quantize_ref import quantize_ref
from localllm.layers.cpu_parts import CpuQuantMatmul, DensePart, Int4Part
from localllm.layers.quantized import BlockLayout


def _layout_and_weight(spans: list[tuple[int, str]], cols: int, seed: int = 0):
    """A layout of consecutive row spans (count, format) and its flat buffer, filled from random weights."""
    torch.manual_seed(seed)
    layout = BlockLayout.of(sum(n for n, _ in spans), cols,
                            [(sum(n for n, _ in spans[:i]), n, fmt) for i, (n, fmt) in enumerate(spans)])
    weight = torch.zeros(layout.nbytes, dtype=torch.uint8)
    for part in layout.parts:
        layout.blocks(weight, part).copy_(quantize_ref(torch.randn(part.rows, cols), part.fmt))
    return layout, weight


def _relative_error(x: torch.Tensor, layout: BlockLayout, weight: torch.Tensor) -> float:
    want = x @ layout.dequantize(weight).T
    got = CpuQuantMatmul(layout, weight)(x)
    assert got.dtype == x.dtype and got.shape == want.shape
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1"])
@pytest.mark.parametrize("batch", [1, 5])
def test_int4_parts_match_their_dequantized_blocks(fmt, batch):
    layout, weight = _layout_and_weight([(64, fmt)], 96)
    matmul = CpuQuantMatmul(layout, weight)
    assert [type(p) for p, _, _ in matmul.parts] == [Int4Part]
    assert _relative_error(torch.randn(batch, 96), layout, weight) < 1e-2


def test_other_formats_and_odd_row_counts_run_as_bfloat16_copies():
    layout, weight = _layout_and_weight([(32, "Q4_1"), (8, "Q4_0"), (16, "Q8_0")], 64)
    matmul = CpuQuantMatmul(layout, weight)
    assert [type(p) for p, _, _ in matmul.parts] == [Int4Part, DensePart, DensePart]
    x = torch.randn(3, 2, 64)
    assert _relative_error(x, layout, weight) < 1e-2


def test_the_int4_layout_holds_the_blocks_values():
    """A weight matrix of one 1 per row (x = identity) reads back each weight, up to bfloat16."""
    layout, weight = _layout_and_weight([(16, "Q4_1")], 32, seed=3)
    dense = dequantize_ref(layout.blocks(weight, layout.parts[0]), "Q4_1")
    read_back = CpuQuantMatmul(layout, weight)(torch.eye(32)).T
    torch.testing.assert_close(read_back, dense, atol=2e-2 * dense.abs().max().item(), rtol=0)
