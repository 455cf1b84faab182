"""The Python side of launching quant_matmul's and quant_gemm's kernels: the planes and constants a kernel takes
for a format, the unit of a plane's row, the split-K workspace, the GPU's properties."""
from __future__ import annotations

import functools

import torch

from localllm.kernels.block_formats import PLANES, block_format

_K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
FORMAT_IDS = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2, "Q4_K": 3, "Q5_K": 4, "Q6_K": 5, "int4_g128": 6, "fp8_e4m3_g128": 7}


def kernel_planes(planes: dict, fmt: str) -> tuple:
    """The planes in the kernels' argument order q, qh, a, b, d, e (quant_tiles.load_units; an absent one is q
    again)."""
    q = planes["q"]
    kquant = fmt in _K_QUANTS
    b = planes.get("m", planes.get("mn", planes.get("zero", q)))
    return q, planes.get("qh", q), planes[a_plane(fmt)], b, planes["d"] if kquant else q, planes.get("dmin", q)


def a_plane(fmt: str) -> str:
    return "sc" if fmt in _K_QUANTS else "d"


def constants(fmt: str, x: torch.Tensor) -> dict:
    specs = {p.name: p for p in PLANES[fmt]}
    fp8_hw = converts_e4m3(x)
    group = block_format(fmt).group
    return dict(FMT=FORMAT_IDS[fmt], BITS=specs["q"].bits, A_PER=specs[a_plane(fmt)].per, G=group,
                UNIT=unit_words(fmt), FP8_HW=fp8_hw)


def converts_e4m3(x: torch.Tensor) -> bool:
    """Whether x's device converts float8 e4m3 in hardware (Ada, Hopper and later)."""
    return x.is_cuda and capability(x.device) >= (8, 9)


def unit_words(fmt: str) -> int:
    """Words of the quant plane a thread reads at once (quant_tiles.load_units): 16 bytes, or a whole group."""
    return min(4, group_words(fmt))


def gemv_unit_words(fmt: str) -> int:
    """The GEMV's unit: Q8_0's whole group of 8 words (two vector loads), so that its scale, x's scale and their
    addresses are read once a group; unit_words otherwise."""
    return group_words(fmt) if fmt == "Q8_0" else unit_words(fmt)


def group_words(fmt: str) -> int:
    """Words of the quant plane in a group (the weights sharing one scale)."""
    return block_format(fmt).group * PLANES[fmt][0].bits // 32


def row_units(fmt: str, k: int, unit: int | None = None) -> int:
    """Units of the quant plane (of `unit` words, by default unit_words) in a row of k weights."""
    return k * PLANES[fmt][0].bits // 32 // (unit or unit_words(fmt))


@functools.lru_cache(maxsize=None)
def capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


class SplitWorkspace:
    """Per device: the GEMV's split-K partial sums and per-row-tile arrival counters (zero between calls: the
    last program of a tile resets its counter). Grown, never shrunk, and never freed: a CUDA graph captured with a
    smaller one still writes into it when it replays (freed, its memory would go to other tensors)."""
    buffers: dict = {}
    retired: list = []

    @classmethod
    def get(cls, device: torch.device, partials: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        partial, arrivals = cls.buffers.get(device, (None, None))
        if partial is None or partial.numel() < partials or arrivals.numel() < tiles:
            if partial is not None:
                cls.retired.append((partial, arrivals))
            grown = 2 * partial.numel() if partial is not None else 1 << 20
            partial = torch.empty(max(partials, grown), dtype=torch.float32, device=device)
            arrivals = torch.zeros(max(tiles, 1 << 14), dtype=torch.int32, device=device)
            cls.buffers[device] = (partial, arrivals)
        return partial, arrivals
