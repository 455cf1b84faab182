"""FP8 (e4m3) checkpoints, repacked at load into the fp8_e4m3_g128 blocks of localllm.kernels (128 float8 weights
of one row and their float32 scale), which hold every scale granularity these checkpoints use exactly.

Layouts read (a linear layer with K inputs and N outputs; `<layer>.weight` is float8_e4m3fn [N, K], w = fp8 * scale):
- transformers' fine-grained FP8 (`"quant_method": "fp8"`, e.g. Qwen/Qwen3-8B-FP8): `<layer>.weight_scale_inv`
  float32 [ceil(N / bn), ceil(K / bk)], one scale per bn x bk tile (`weight_block_size`, [128, 128]).
- compressed-tensors float-quantized (`"quant_method": "compressed-tensors"`, e.g. RedHatAI's -FP8 models):
  `<layer>.weight_scale` float32 of one element (per tensor) or [N] / [N, 1] (per output channel). Their static
  `input_scale` is not used: activations stay in the model dtype.
"""
from __future__ import annotations

import torch

from localllm.errors import UnsupportedModelError
from localllm.kernels.quantize_ref import fp8_blocks

BLOCK = 128
SCALE_SUFFIXES = (".weight_scale_inv", ".weight_scale", ".input_scale")


def fp8_tile(config: dict) -> tuple[int, int] | None:
    """(bn, bk) of an fp8 or compressed-tensors checkpoint whose scales are per tile, None when they are per
    tensor or channel. Raises for compressed-tensors weights that are not 8-bit floats."""
    if config.get("quant_method") == "fp8":
        tile = config.get("weight_block_size")
        return tuple(tile) if tile else None
    groups = (config.get("config_groups") or {}).values()
    for weights in [group.get("weights") or {} for group in groups] or [{}]:
        if weights.get("type") != "float" or weights.get("num_bits") != 8:
            raise UnsupportedModelError(f"compressed-tensors weights of {weights.get('num_bits')}-bit "
                                        f"{weights.get('type')} are not supported (8-bit float, FP8)")
    return None


def fp8_weight_blocks(weight: torch.Tensor, scale: torch.Tensor, tile: tuple[int, int] | None) -> torch.Tensor:
    """The fp8_e4m3_g128 rows [N, K / 128 * 132] of a float8 weight [N, K] and its scales."""
    n, k = weight.shape
    if k % BLOCK:
        raise UnsupportedModelError(f"an FP8 weight of {k} input features is not whole blocks of {BLOCK}")
    scale = scale.to(torch.float32)
    if scale.numel() == 1:                      # per tensor
        per_block = scale.reshape(1, 1).expand(n, k // BLOCK)
    elif scale.numel() == n and tile is None:   # per output channel
        per_block = scale.reshape(n, 1).expand(n, k // BLOCK)
    else:                                       # per tile of bn x bk
        bn, bk = tile or (BLOCK, BLOCK)
        if bk % BLOCK or scale.shape != (-(-n // bn), -(-k // bk)):
            raise UnsupportedModelError(f"FP8 scales of shape {tuple(scale.shape)} for a {n}x{k} weight in "
                                        f"{bn}x{bk} tiles are not supported")
        per_block = scale.repeat_interleave(bn, 0)[:n].repeat_interleave(bk // BLOCK, 1)[:, :k // BLOCK]
    blocks = fp8_blocks(weight.reshape(-1, BLOCK), per_block.reshape(-1))
    return blocks.reshape(n, -1)
