"""The model architectures localllm runs, one row each. The models read it for which class to build, the GGUF
converter for how to name and lay out a GGUF's tensors, `pull` for what to accept before downloading. Plain
data without torch, so that `pull` and the daemon's front end can check a model without loading the models."""
from __future__ import annotations

from dataclasses import dataclass

from localllm.errors import UnsupportedModelError


@dataclass(frozen=True)
class Architecture:
    hf_class: str         # config.json "architectures" entry, and the class's name in localllm.models.<model_type>
    model_type: str       # config.json "model_type", GGUF "general.architecture" and our module's name
    # llama.cpp interleaves the rotary halves of q/k rows for llama-family models, not for qwen
    gguf_permuted_qk: bool


ARCHITECTURES = (
    Architecture("LlamaForCausalLM", "llama", gguf_permuted_qk=True),
    Architecture("MistralForCausalLM", "mistral", gguf_permuted_qk=True),
    Architecture("Qwen2ForCausalLM", "qwen2", gguf_permuted_qk=False),
    Architecture("Qwen3ForCausalLM", "qwen3", gguf_permuted_qk=False),
)
BY_HF_CLASS = {a.hf_class: a for a in ARCHITECTURES}
BY_GGUF_NAME = {a.model_type: a for a in ARCHITECTURES}


def hf_architecture(names: list | None, where: str) -> Architecture:
    """The first supported entry of a config.json's "architectures" list."""
    for name in names or []:
        if name in BY_HF_CLASS:
            return BY_HF_CLASS[name]
    raise UnsupportedModelError(f"{where}: architecture {', '.join(map(str, names or [])) or '(none given)'} is "
                                f"not supported (supported: {', '.join(BY_HF_CLASS)})")


def gguf_architecture(name: object, where: str) -> Architecture:
    """The row of a GGUF's "general.architecture"."""
    if name not in BY_GGUF_NAME:
        raise UnsupportedModelError(f"{where}: GGUF architecture {name!r} is not supported "
                                    f"(supported: {', '.join(BY_GGUF_NAME)})")
    return BY_GGUF_NAME[name]
