"""Text in, text out around the engine core: tokenizing, incremental detokenizing and stop strings."""
from __future__ import annotations

from localllm.config import Config
from localllm.engine.core import EngineCore
from localllm.engine.detokenizer import IncrementalDetokenizer
from localllm.engine.outputs import StreamDelta
from localllm.loader.hf_dir import eos_token_ids, load_hf_config, load_tokenizer
from localllm.loader.resolve import resolve_model
from localllm.models import model_class
from localllm.sampling_params import SamplingParams


class LLMEngine:
    def __init__(self, config: Config):
        self.config = config
        self.model_dir = resolve_model(config.model)
        hf_config = load_hf_config(self.model_dir)
        model_class(hf_config)  # an unsupported architecture fails before anything heavy is loaded
        self.hf_config = hf_config
        self.tokenizer = load_tokenizer(self.model_dir)
        self.core = EngineCore(config, self.model_dir, hf_config, eos_token_ids(self.model_dir, self.tokenizer,
                                                                                  hf_config))
        self._params: dict[str, SamplingParams] = {}
        self._detokenizers: dict[tuple[str, int], IncrementalDetokenizer] = {}

    def encode(self, prompt: str | list[int]) -> list[int]:
        return list(prompt) if not isinstance(prompt, str) else self.tokenizer.encode(prompt)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise ValueError(f"the model in {self.model_dir} has no chat template; use a plain prompt")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.core.add_request(request_id, prompt_token_ids, params)
        self._params[request_id] = params

    def abort_request(self, request_id: str) -> None:
        self.core.abort_request(request_id)
        self._params.pop(request_id, None)
        for key in [k for k in self._detokenizers if k[0] == request_id]:
            del self._detokenizers[key]

    @property
    def has_unfinished(self) -> bool:
        return self.core.has_unfinished

    def step(self) -> list[StreamDelta]:
        deltas = []
        for event in self.core.step():
            params = self._params[event.request_id]
            key = (event.request_id, event.index)
            detokenizer = self._detokenizers.get(key)
            if detokenizer is None:
                detokenizer = IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens, params.stop)
                self._detokenizers[key] = detokenizer
            text, stopped = detokenizer.append(event.sampled.token_id)
            reason = "stop" if stopped else event.finish_reason
            if stopped and event.finish_reason is None:
                self.core.finish_sequence(event.request_id, event.index, "stop")
            elif reason is not None:
                text += detokenizer.flush()
            if reason is not None:
                del self._detokenizers[key]
            logprobs = [event.sampled] if params.logprobs is not None else None
            deltas.append(StreamDelta(event.request_id, event.index, text, [event.sampled.token_id], logprobs,
                                      reason))
        for request_id in [r for r in self._params if r not in self.core.requests]:
            del self._params[request_id]
        return deltas
