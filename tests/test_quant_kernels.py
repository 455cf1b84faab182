"""The quantized matmul kernels (localllm.kernels.quant_matmul: GEMV for up to 8 rows, tiled GEMM above) against
quant_blocks_ref.quant_matmul_ref (dequantize, then matmul), for every block format, under Triton's interpreter
(tests/triton_interpreter.py). Small shapes keep the interpreter fast; K is not a multiple of the tile's K and N
not of its rows, so the masked edges run too.

The interpreter multiplies bfloat16 tl.dot operands as raw bits (a minimal tl.dot of two bf16 tiles is wrong
there, not on GPUs), so the GEMM is checked in float32 and float16 here and in bfloat16 on a GPU
(scripts/gpu_quant_check.py); the GEMV, which does not use tl.dot, is checked in bfloat16 too."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402

from localllm.kernels.block_formats import BLOCK_FORMATS  # noqa: E402
from localllm.kernels.quant_blocks_ref import dequantize_ref, quant_matmul_ref  # noqa: E402
from localllm.kernels.quantize_ref import quantize_ref  # noqa: E402

FORMATS = list(BLOCK_FORMATS)
# relative to the largest output: float32 agrees to rounding; 16-bit inputs and outputs to their rounding
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def test_quant_kernels_under_triton_interpreter():
    run_under_interpreter(__file__)


def _case(fmt: str, m: int, n: int = 19, seed: int = 0):
    f = BLOCK_FORMATS[fmt]
    k = 3 * f.elems if f.elems == 32 else 2 * f.elems    # 96: a partial 64-wide tile at the end
    g = torch.Generator().manual_seed(seed)
    raw = quantize_ref(torch.randn(n, k, generator=g), fmt)
    return torch.randn(m, k, generator=g), raw


def _check(got: torch.Tensor, x: torch.Tensor, raw: torch.Tensor, fmt: str) -> None:
    want = quant_matmul_ref(x.float(), raw, fmt)
    assert got.dtype == x.dtype and got.shape == want.shape
    assert torch.isfinite(got.float()).all()
    error = (got.float() - want).abs().max() / want.abs().max()
    assert error < TOLERANCE[x.dtype], f"{fmt} {x.dtype} {tuple(x.shape)}: relative error {error:.2e}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_gemv_one_row_float32(fmt):
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case(fmt, 1)
    _check(quant_matmul(x, raw, fmt), x, raw, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gemv_three_rows_bfloat16(fmt):
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case(fmt, 3, seed=1)
    _check(quant_matmul(x.bfloat16(), raw, fmt), x.bfloat16(), raw, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gemm_float32(fmt):
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case(fmt, 21, seed=2)
    _check(quant_matmul(x, raw, fmt), x, raw, fmt)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q8_0"])
def test_gemm_float16(fmt):
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case(fmt, 17, seed=3)
    _check(quant_matmul(x.half(), raw, fmt), x.half(), raw, fmt)


def test_gemv_with_gpu_tile_sizes(monkeypatch):
    """The GPU's tiles (256 weights a step, 8 rows): a K of 512 = two whole K-quant blocks, 8 rows of x."""
    from localllm.kernels import quant_matmul as qm

    monkeypatch.setattr(qm, "GPU_TILES_EVERYWHERE", True)
    g = torch.Generator().manual_seed(4)
    for fmt in ("Q6_K", "Q4_0"):
        raw = quantize_ref(torch.randn(11, 512, generator=g), fmt)
        x = torch.randn(8, 512, generator=g)
        _check(qm.quant_matmul(x, raw, fmt), x, raw, fmt)


def test_fp8_decodes_every_finite_code_exactly():
    """The kernels build float8 e4m3 values from their bits: every finite code (normal and subnormal, both signs)
    times its block's scale, as torch's float8_e4m3fn gives it; x = the identity reads the weight back."""
    from localllm.kernels.quant_matmul import quant_matmul
    from localllm.kernels.quantize_ref import fp8_blocks

    codes = torch.arange(256, dtype=torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0          # 0x7f and 0xff are NaN
    values = codes.view(torch.float8_e4m3fn).reshape(2, 128)
    raw = fp8_blocks(values, torch.tensor([0.75, -3.0])).reshape(1, -1)
    want = dequantize_ref(raw, "fp8_e4m3_g128")
    assert torch.equal(want, (values.float() * torch.tensor([[0.75], [-3.0]])).reshape(1, -1))
    got = quant_matmul(torch.eye(256), raw, "fp8_e4m3_g128")
    assert torch.equal(got.reshape(1, -1), want)


def test_output_into_a_column_slice_and_empty_input():
    """A merged projection's part writes its columns of a wider output; a step with no rows computes nothing."""
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case("Q4_1", 9, n=7, seed=5)
    out = torch.full((9, 12), float("nan"))
    result = quant_matmul(x, raw, "Q4_1", out=out[:, 3:10])
    assert result.data_ptr() == out[:, 3:10].data_ptr()
    _check(out[:, 3:10], x, raw, "Q4_1")
    assert out[:, :3].isnan().all() and out[:, 10:].isnan().all()
    assert quant_matmul(x[:0], raw, "Q4_1").shape == (0, 7)


def test_three_dimensional_input():
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case("Q8_0", 6, seed=6)
    got = quant_matmul(x.reshape(2, 3, -1), raw, "Q8_0")
    assert got.shape == (2, 3, 19)
    _check(got.reshape(6, 19), x, raw, "Q8_0")


collect_one_mode(globals(), "test_quant_kernels_under_triton_interpreter")
