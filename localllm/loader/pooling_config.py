"""How an embedding model turns its last hidden states into one vector, read from its sentence-transformers files:
`modules.json` lists the modules (Transformer, Pooling, Normalize) and the Pooling module's `config.json` says which
tokens it pools. A model directory with a `modules.json` is an embedding model; one without is not. Plain data and
JSON, without torch, so the daemon's front end can read what the engine read."""
from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec

from localllm.errors import CorruptModelError, UnsupportedModelError

POOLING_MODES = ("last", "mean", "cls")
# sentence-transformers' Pooling config flags, and what we call the mode each selects
_MODE_FLAGS = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
               "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
               "pooling_mode_weightedmean_tokens": "weightedmean"}
_MODULE_KINDS = ("Transformer", "Pooling", "Normalize")
# Families trained with Matryoshka representation learning whose config does not say so (vLLM's convention is
# `is_matryoshka` / `matryoshka_dimensions` in config.json), matched on the model directory's name (a pulled model's
# is huggingface_hub's `models--Qwen--Qwen3-Embedding-0.6B`): the smallest size each is trained to keep.
_MATRYOSHKA_FAMILIES = ((re.compile(r"(^|/)qwen3-embedding-", re.IGNORECASE), 32),)


class PoolingConfig(msgspec.Struct, frozen=True, array_like=True):
    mode: str                  # one of POOLING_MODES
    normalize: bool            # L2-normalize the pooled vector (a Normalize module follows the pooling)
    dimension: int             # the vector's full size: the model's hidden size
    # the sizes a request's `dimensions` may ask for (Matryoshka truncation); None = only the full size
    matryoshka_dimensions: list[int] | None = None

    def allows_dimensions(self, dimensions: int) -> bool:
        return dimensions == self.dimension or dimensions in (self.matryoshka_dimensions or ())


def read_pooling_config(model_dir: Path) -> PoolingConfig | None:
    """The model's pooling, or None when the directory is no sentence-transformers model. Raises
    UnsupportedModelError for modules or pooling modes this engine does not run (Dense layers, max pooling...)."""
    model_dir = Path(model_dir)
    modules = _json(model_dir / "modules.json")
    if modules is None:
        return None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CorruptModelError(f"{model_dir / 'modules.json'} is not a list of modules")
    kinds = {}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _MODULE_KINDS:
            raise UnsupportedModelError(f"{model_dir}: sentence-transformers module {module.get('type')!r} is not "
                                        f"supported (supported: {', '.join(_MODULE_KINDS)})")
        kinds[kind] = module
    if "Pooling" not in kinds:
        raise UnsupportedModelError(f"{model_dir}: modules.json has no Pooling module")
    pooling = _json(model_dir / str(kinds["Pooling"].get("path", "")) / "config.json") or {}
    config = _json(model_dir / "config.json") or {}
    dimension = int(pooling.get("word_embedding_dimension") or config.get("hidden_size") or 0)
    return PoolingConfig(_mode(pooling, model_dir), "Normalize" in kinds, dimension,
                         _matryoshka_dimensions(config, model_dir, dimension))


def _mode(pooling: dict, model_dir: Path) -> str:
    modes = [mode for flag, mode in _MODE_FLAGS.items() if pooling.get(flag)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        found = " + ".join(modes) or "none"
        raise UnsupportedModelError(f"{model_dir}: pooling mode {found} is not supported "
                                    f"(supported: exactly one of {', '.join(POOLING_MODES)})")
    return modes[0]


def _matryoshka_dimensions(config: dict, model_dir: Path, dimension: int) -> list[int] | None:
    listed = config.get("matryoshka_dimensions")
    if isinstance(listed, list) and all(isinstance(d, int) and 0 < d <= dimension for d in listed):
        return sorted(set(listed) | {dimension})
    if config.get("is_matryoshka") is True:
        return list(range(1, dimension + 1))
    name = _repo_name(model_dir)
    for pattern, smallest in _MATRYOSHKA_FAMILIES:
        if pattern.search(name):
            return list(range(smallest, dimension + 1))
    return None


def _repo_name(model_dir: Path) -> str:
    """owner/name of a huggingface_hub snapshot (.../models--owner--name/snapshots/<commit>), else the directory's
    own name."""
    path = model_dir.resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")
    return path.name


def _json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptModelError(f"{path} is not valid JSON: {e}") from None
