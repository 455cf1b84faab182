"""The plain-torch ground truth of fp8_gemm: x quantized to float8 e4m3 per row and group of 128 columns (scale =
the group's largest magnitude / 448, 1 for a group of zeros), multiplied by the fp8_e4m3_g128 weight, both
dequantized to float32."""
from __future__ import annotations

import torch

from localllm.kernels.quant_planes_ref import Planes, dequantize_planes_ref
from localllm.kernels.quantize_ref import FP8_MAX

GROUP = 128


def quantize_x_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (float8_e4m3fn [M, K], float32 scales [M, K / 128]); x ~= values * scale of their group."""
    groups = x.float().reshape(x.shape[0], -1, GROUP)
    amax = groups.abs().amax(-1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    values = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return values.reshape(x.shape), scale


def _scaled(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float8 values [R, K] times their blocks' scales [R, K / 128], float32 [R, K]."""
    return (values.float().reshape(values.shape[0], -1, GROUP) * scales[..., None]).reshape(values.shape)


def fp8_matmul_ref(x: torch.Tensor, planes: Planes) -> torch.Tensor:
    """y = x @ W^T in float32 for W [N, K] held as fp8_e4m3_g128 planes, x as quantize_x_ref gives it."""
    x_hat = _scaled(*quantize_x_ref(x))
    return x_hat.double().matmul(dequantize_planes_ref(planes, "fp8_e4m3_g128").double().t()).float()


def block_scaled_mm_ref(a8: torch.Tensor, a_scales: torch.Tensor, b8: torch.Tensor,
                        b_scales: torch.Tensor) -> torch.Tensor:
    """What torch._scaled_mm computes with 1x128 block scales on both sides, float32 [M, N]: a8 [M, K] and b8 [N, K]
    float8, a_scales [M, K / 128], b_scales [N, K / 128]; each block's products scaled by both blocks' scales."""
    return _scaled(a8, a_scales).double().matmul(_scaled(b8, b_scales).double().t()).float()
