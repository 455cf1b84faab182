"""The FP8 tensor-core matmul's x (localllm.kernels.fp8_gemm) under Triton's interpreter: x quantized to e4m3 per
group of 128 exactly as fp8_gemm_ref quantizes it (values, scales and the weight plane's column order), the
products it and the plane make under cuBLAS's block scaling (block_scaled_mm_ref) against fp8_matmul_ref, and one
quantized x for a merged projection's parts. The cuBLAS call itself runs on a GPU only: scripts/gpu_quant_check.py
checks it against fp8_matmul_ref."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402

from localllm.kernels.fp8_gemm_ref import block_scaled_mm_ref, fp8_matmul_ref, quantize_x_ref  # noqa: E402
from localllm.kernels.quant_planes_ref import pack_planes, planes_matmul_ref  # noqa: E402
from localllm.kernels.quantize_ref import quantize_ref  # noqa: E402

FP8 = "fp8_e4m3_g128"


def test_fp8_gemm_under_triton_interpreter():
    run_under_interpreter(__file__)


def _plane_order(values: torch.Tensor) -> torch.Tensor:
    """[M, K] columns in the weight plane's order: within 32 columns, position 4c + j holds column 8j + c."""
    return values.reshape(values.shape[0], -1, 4, 8).transpose(-1, -2).reshape(values.shape)


def _x(m: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 2, m)[:, None]   # scales far apart by row
    x[0, :128] = 0                                                             # a group of zeros: scale 1
    x[-1, 5] = 1e4                                                             # one large value in a group
    return x


def test_quantize_x_is_the_reference_in_plane_order():
    from localllm.kernels.fp8_gemm import quantize_x

    x = _x(5, 384).to(torch.bfloat16)
    values, scales = quantize_x(x)
    want_values, want_scales = quantize_x_ref(x)
    assert values.shape == (16, 384) and scales.shape == (16, 3) and scales.stride() == (1, 16)
    assert torch.equal(scales[:5], want_scales)
    assert torch.equal(values[:5].view(torch.uint8), _plane_order(want_values.view(torch.uint8)))
    assert torch.equal(scales[0, 0], torch.tensor(1.0))
    assert torch.equal(scales[5:], torch.ones(11, 3)) and not values[5:].view(torch.uint8).any()   # the padding


@pytest.mark.parametrize("m,n", [(1, 16), (19, 37)])
def test_the_plane_order_product_is_the_reference(m, n):
    """x quantized in the plane's column order times the quant plane read as an fp8 matrix, with the block scaling
    fp8_matmul asks cuBLAS for, is y = x @ W^T as fp8_matmul_ref computes it."""
    from localllm.kernels.fp8_gemm import quantize_x

    k = 384
    planes = pack_planes(quantize_ref(torch.randn(n, k, generator=torch.Generator().manual_seed(1)) * 0.05, FP8), FP8)
    x = _x(m, k)
    x8, x_scales = quantize_x(x)
    got = block_scaled_mm_ref(x8, x_scales, planes["q"].view(torch.float8_e4m3fn), planes["d"])[:m]
    want = fp8_matmul_ref(x, planes)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
    # x's quantization shows: for a plain x the weight-only product is further from it than that tolerance
    plain = torch.randn(m, k, generator=torch.Generator().manual_seed(3))
    weight_only = planes_matmul_ref(plain, planes, FP8)
    assert not torch.allclose(fp8_matmul_ref(plain, planes), weight_only, rtol=1e-4,
                              atol=1e-4 * weight_only.abs().max().item())


def test_merged_parts_share_one_quantized_x():
    from localllm.kernels.fp8_gemm import quantize_x

    x = _x(17, 256).to(torch.bfloat16)
    packed = {}
    first = quantize_x(x, packed)
    assert set(packed) == {"fp8"} and quantize_x(x, packed) is first


collect_one_mode(globals(), "test_fp8_gemm_under_triton_interpreter")
