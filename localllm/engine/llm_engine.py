"""Text in, text out around the engine core: tokenizing, incremental detokenizing and stop strings; and text in,
vectors out for an embedding model."""
from __future__ import annotations

import weakref

from localllm.config import Config
from localllm.engine.core import EngineCore, keeps_gguf_blocks
from localllm.engine.events import EmbeddingEvent
from localllm.engine.output_processor import OutputProcessor
from localllm.engine.outputs import StreamDelta
from localllm.engine.quant_choice import settle_quantization
from localllm.loader.hf_dir import open_model
from localllm.pooling_params import PoolingParams
from localllm.sampling_params import SamplingParams


class LLMEngine:
    def __init__(self, config: Config):
        config = settle_quantization(config, config.model)
        self.config = config
        files = open_model(config.model, keeps_gguf_blocks(config))
        self.model_dir, self.hf_config, self.tokenizer = files.model_dir, files.hf_config, files.tokenizer
        self.pooling = files.pooling
        self.core = EngineCore(config, files.model_dir, files.hf_config, files.eos_token_ids, pooling=files.pooling)
        self.output_processor = OutputProcessor(self.tokenizer)
        # tensor-parallel workers stop with the engine, or at the latest when the interpreter exits
        self._finalizer = weakref.finalize(self, self.core.shutdown)

    def shutdown(self) -> None:
        self._finalizer()

    def encode(self, prompt: str | list[int]) -> list[int]:
        return list(prompt) if not isinstance(prompt, str) else self.tokenizer.encode(prompt)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise ValueError(f"the model in {self.model_dir} has no chat template; use a plain prompt")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.core.add_request(request_id, prompt_token_ids, params)
        self.output_processor.add_request(request_id, params)

    def add_embedding_request(self, request_id: str, prompt_token_ids: list[int], params: PoolingParams) -> None:
        self.core.add_request(request_id, prompt_token_ids, params)

    def take_embeddings(self) -> list[EmbeddingEvent]:
        """The vectors of the embedding requests that the steps so far finished."""
        return self.core.take_embeddings()

    def abort_request(self, request_id: str) -> None:
        self.core.abort_request(request_id)
        self.output_processor.forget(request_id)

    @property
    def has_unfinished(self) -> bool:
        return self.core.has_unfinished

    def step(self) -> list[StreamDelta]:
        events = self.core.step()
        deltas, stopped_by_text = self.output_processor.process(events)
        for request_id, index in stopped_by_text:
            self.core.finish_sequence(request_id, index, "stop")
        for request_id in {e.request_id for e in events} - self.core.requests.keys():
            self.output_processor.forget(request_id)
        return deltas
