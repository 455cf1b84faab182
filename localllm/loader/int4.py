"""AWQ and GPTQ int4 checkpoints (4-bit, group size 128, as config.json's quantization_config says), repacked at
load into the int4_g128 blocks of localllm.kernels.quant_blocks_ref, so both run on the same kernels: per group of
128 input weights of one output row, w = (q - zero) * scale.

Layouts read (a linear layer with K inputs and N outputs, G = 128; int32 words hold 8 nibbles, bits 4i..4i+3 = i):
- AWQ (AutoAWQ's GEMM version, `"version": "gemm"`): qweight int32 [K, N / 8] and qzeros int32 [K / G, N / 8] packed
  along the outputs in the order [0, 2, 4, 6, 1, 3, 5, 7] (nibble i holds output 8c + order[i]); scales float16
  [K / G, N]. w[k, n] = (q[k, n] - zero[k // G, n]) * scale[k // G, n].
- GPTQ (AutoGPTQ / GPTQModel, no act-order): qweight int32 [K / 8, N] packed along the inputs (nibble i of word r
  holds input 8r + i); qzeros int32 [K / G, N / 8] packed along the outputs in order; scales float16 [K / G, N];
  g_idx int32 [K] equal to k // G (act-order checkpoints, whose g_idx permutes the groups, are refused). The
  original format (`checkpoint_format` "gptq", the default) stores zero - 1, so zero = stored + 1; "gptq_v2" stores
  the zero itself. w[k, n] = scale[g, n] * (q[k, n] - zero[g, n]).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from localllm.errors import UnsupportedModelError

GROUP = 128
PARTS = ("qweight", "qzeros", "scales", "g_idx")
_AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]   # output j of a word sits in nibble _AWQ_REVERSE_ORDER[j]


@dataclass(frozen=True)
class Int4Spec:
    method: str            # awq or gptq
    zeros_minus_one: bool  # GPTQ's original format


def int4_spec(config: dict) -> Int4Spec:
    """The int4 scheme of an AWQ or GPTQ quantization_config; raises for what is not 4 bits in groups of 128."""
    method = config.get("quant_method")
    bits, group = config.get("bits", config.get("w_bit")), config.get("group_size", config.get("q_group_size"))
    if bits != 4 or group != GROUP:
        raise UnsupportedModelError(f"{method} with {bits} bits and group size {group} is not supported "
                                    f"(4 bits, group size {GROUP})")
    if method == "awq" and (str(config.get("version", "gemm")).lower() != "gemm" or not config.get("zero_point", True)):
        raise UnsupportedModelError(f"AWQ version {config.get('version')!r} without zero points is not supported "
                                    "(the GEMM packing with zero points)")
    checkpoint_format = config.get("checkpoint_format", "gptq")
    if method == "gptq" and checkpoint_format not in ("gptq", "gptq_v2"):
        raise UnsupportedModelError(f"GPTQ checkpoint format {checkpoint_format!r} is not supported")
    return Int4Spec(method, method == "gptq" and checkpoint_format == "gptq")


def _nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 [..., C] -> [..., C, 8] nibbles, nibble i = bits 4i..4i+3."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=words.device)
    return (words.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF


def _along_outputs(words: torch.Tensor, order: list[int] | None) -> torch.Tensor:
    """[R, N / 8] words packed along the outputs -> [R, N]."""
    values = _nibbles(words)
    if order is not None:
        values = values[..., order]
    return values.reshape(words.shape[0], -1)


def int4_blocks(spec: Int4Spec, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The int4_g128 rows [N, K / 128 * 68] of one layer from its checkpoint tensors (PARTS)."""
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    if spec.method == "awq":
        q = _along_outputs(qweight, _AWQ_REVERSE_ORDER)                                  # [K, N]
        zeros = _along_outputs(qzeros, _AWQ_REVERSE_ORDER)
    else:
        q = _nibbles(qweight).transpose(1, 2).reshape(-1, qweight.shape[1])               # [K, N]
        zeros = _along_outputs(qzeros, None) + int(spec.zeros_minus_one)
        g_idx = parts.get("g_idx")
        if g_idx is not None and not torch.equal(g_idx.long(), torch.arange(q.shape[0]) // GROUP):
            raise UnsupportedModelError("GPTQ with act-order (a g_idx that reorders the groups) is not supported")
    k, n = q.shape
    if scales.shape != (k // GROUP, n) or zeros.shape != scales.shape:
        raise ValueError(f"int4 tensors do not fit together: weights {k}x{n}, scales {tuple(scales.shape)}, "
                         f"zeros {tuple(zeros.shape)}")
    groups = q.t().reshape(n, k // GROUP, 2, GROUP // 2).to(torch.uint8)
    packed = groups[:, :, 0] | (groups[:, :, 1] << 4)                                   # byte i: weights i, i + 64
    scale_bytes = scales.to(torch.float16).contiguous().view(torch.uint8).reshape(k // GROUP, n, 2).transpose(0, 1)
    zero = zeros.t().to(torch.uint8).unsqueeze(-1)
    blocks = torch.cat((scale_bytes, zero, torch.zeros_like(zero), packed), dim=-1)
    return blocks.reshape(n, -1)
