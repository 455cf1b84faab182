"""Architecture name (config.json "architectures") -> our module."""
from localllm.errors import UnsupportedModelError
from localllm.models.llama import LlamaForCausalLM
from localllm.models.mistral import MistralForCausalLM
from localllm.models.qwen2 import Qwen2ForCausalLM
from localllm.models.qwen3 import Qwen3ForCausalLM

ARCHITECTURES = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def model_class(hf_config):
    names = getattr(hf_config, "architectures", None) or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise UnsupportedModelError(
        f"unsupported architecture {', '.join(names) or '(none given)'}; supported: {', '.join(ARCHITECTURES)}")
