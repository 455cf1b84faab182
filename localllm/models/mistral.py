"""Mistral: Llama with sliding-window attention on every layer when the config sets a window."""
from localllm.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def sliding_window(cfg, layer: int) -> int | None:
        return getattr(cfg, "sliding_window", None)
