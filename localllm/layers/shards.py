"""Reading one rank's part of a checkpoint tensor. `loaded` is a torch tensor or a safetensors slice (what
safe_open's get_slice returns): both index the same way, and a slice reads only the bytes asked for from the
memory-mapped file, so a rank never holds the full tensor."""
from __future__ import annotations


def rows(loaded, start: int, size: int):
    """Rows start..start+size (dimension 0)."""
    return loaded[start:start + size]


def columns(loaded, start: int, size: int):
    """Columns start..start+size (dimension 1) of a matrix."""
    return loaded[:, start:start + size]


def whole(loaded):
    return loaded[:]


def shape_of(loaded) -> tuple[int, ...]:
    return tuple(loaded.shape) if hasattr(loaded, "shape") else tuple(loaded.get_shape())
