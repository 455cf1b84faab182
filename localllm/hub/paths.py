"""Where localllm keeps what it downloads and derives."""
from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """$LOCALLLM_HOME if set, else the platform's per-user data directory."""
    override = os.environ.get("LOCALLLM_HOME")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("localllm"))
