"""Qwen2: Llama with a bias on the q/k/v projections (none on o); optional sliding window via layer_types."""
from localllm.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM


class Qwen2Attention(LlamaAttention):
    @staticmethod
    def biases(cfg) -> tuple[bool, bool]:
        return True, False


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_class = Qwen2Attention


class Qwen2ForCausalLM(LlamaForCausalLM):
    decoder_layer_class = Qwen2DecoderLayer
