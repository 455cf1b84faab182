"""Model directories the suite builds: a tiny random-weight model (tests/tiny_models.py), a copy of it with
malicious pickles planted beside the safetensors, and one with only a pickle for weights. Each pickle would
create a marker file if anything unpickled it."""
from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"
PICKLE_NAMES = ("pytorch_model.bin", "training_args.bin", "consolidated.pth", "model.pt", "model.ckpt")


class _MarkerPayload:
    """Unpickling this opens (so creates) the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def tiny_model(root: Path) -> Path:
    target = root / "tiny-qwen3"
    if not (target / "config.json").exists():
        sys.path.insert(0, str(TESTS))
        from tiny_models import build_model_dir

        build_model_dir("qwen3", target)
    return target


def plant_pickles(model_dir: Path, target: Path, marker: Path, keep_weights: bool) -> Path:
    """A copy of `model_dir` with a malicious pickle under every usual pickle name; without
    `keep_weights`, the safetensors weights are left out, so a pickle is all there is."""
    shutil.rmtree(target, ignore_errors=True)
    ignore = None if keep_weights else shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json")
    shutil.copytree(model_dir, target, ignore=ignore)
    payload = pickle.dumps(_MarkerPayload(marker), protocol=2)
    for name in PICKLE_NAMES:
        (target / name).write_bytes(payload)
    return target
