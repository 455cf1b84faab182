"""Per-request settings of a pooling (embedding) request, validated once at the door. How a model pools (last token,
mean, first token; normalized or not) is the model's own, read from its sentence-transformers files
(localllm.loader.pooling_config); a request only chooses how many of the leading features it keeps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class PoolingParams:
    # Keep the first `dimensions` features (Matryoshka truncation), normalized again when the model normalizes;
    # None = all of them. Which sizes a model allows is the server's to check (PoolingConfig.matryoshka_dimensions).
    dimensions: int | None = None
    n: ClassVar[int] = 1   # a pooling request is one sequence, never several completions

    def __post_init__(self) -> None:
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions must be at least 1, got {self.dimensions}")
