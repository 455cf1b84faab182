"""The offline API: LLM(model).generate(prompts, params), LLM.chat(messages, params) and, for an embedding model,
LLM.embed(inputs)."""
from __future__ import annotations

import itertools
from collections.abc import Iterator

from localllm.config import Config
from localllm.engine.llm_engine import LLMEngine
from localllm.engine.outputs import CompletionOutput, RequestOutput, StreamDelta
from localllm.pooling_params import PoolingParams
from localllm.sampling_params import SamplingParams

Prompt = str | list[int]
Messages = list[dict]


class LLM:
    def __init__(self, model: str | None = None, **config):
        self.engine = LLMEngine(Config(model=model, **config))
        self._ids = itertools.count()

    def shutdown(self) -> None:
        """Stops the tensor-parallel worker processes, if any; the LLM is unusable afterwards."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | list[Prompt],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        return self._run([self.engine.encode(p) for p in prompts], params)

    def chat(self, messages: Messages | list[Messages],
             params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        return self._run([self.engine.chat_prompt(c) for c in conversations], params)

    def embed(self, inputs: Prompt | list[Prompt], params: PoolingParams | None = None) -> list[list[float]]:
        """One vector per input (text, or token ids), pooled as the model's sentence-transformers config says;
        the inputs are batched together, and with any generation in flight."""
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        ids = [str(next(self._ids)) for _ in inputs]
        vectors: dict[str, list[float]] = {}
        try:
            for request_id, prompt in zip(ids, inputs):
                self.engine.add_embedding_request(request_id, self.engine.encode(prompt), params or PoolingParams())
            while self.engine.has_unfinished:
                self.engine.step()
                vectors.update((e.request_id, e.embedding) for e in self.engine.take_embeddings())
        finally:
            for request_id in ids:
                self.engine.abort_request(request_id)
        return [vectors[request_id] for request_id in ids]

    def stream(self, prompt_token_ids: list[int], params: SamplingParams | None = None) -> Iterator[StreamDelta]:
        """One request, delta by delta; closing the iterator early aborts the request."""
        request_id = str(next(self._ids))
        self.engine.add_request(request_id, prompt_token_ids, params or SamplingParams())
        try:
            while self.engine.has_unfinished:
                for delta in self.engine.step():
                    yield delta
        finally:
            self.engine.abort_request(request_id)

    def _run(self, prompts: list[list[int]], params) -> list[RequestOutput]:
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling params")
        results: dict[str, RequestOutput] = {}
        try:
            for token_ids, p in zip(prompts, params_list):
                request_id = str(next(self._ids))
                self.engine.add_request(request_id, token_ids, p)
                outputs = [CompletionOutput(i, logprobs=[] if p.logprobs is not None else None) for i in range(p.n)]
                results[request_id] = RequestOutput(request_id, token_ids, outputs)
            while self.engine.has_unfinished:
                for delta in self.engine.step():
                    out = results[delta.request_id].outputs[delta.index]
                    out.text += delta.text
                    out.token_ids += delta.token_ids
                    out.finish_reason = delta.finish_reason
                    if delta.logprobs is not None:
                        out.logprobs += delta.logprobs
                    if delta.prompt_logprobs is not None:
                        results[delta.request_id].prompt_logprobs = [None, *delta.prompt_logprobs]
        finally:
            for request_id in results:
                self.engine.abort_request(request_id)
        return list(results.values())
