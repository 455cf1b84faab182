"""Our model classes, one module per architecture (see localllm.architectures), imported on first use."""
from __future__ import annotations

import importlib

from localllm.architectures import hf_architecture


def model_class(hf_config, where: str = "the model"):
    arch = hf_architecture(getattr(hf_config, "architectures", None), where)
    return getattr(importlib.import_module(f"localllm.models.{arch.model_type}"), arch.hf_class)
