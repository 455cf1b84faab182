"""Turns the core's token events into text deltas: incremental detokenizing and stop strings. Shared by the
in-process LLMEngine and the daemon's front end, which talk to a local and a remote core respectively."""
from __future__ import annotations

from localllm.engine.events import TokenEvent
from localllm.engine.detokenizer import IncrementalDetokenizer
from localllm.engine.outputs import StreamDelta
from localllm.sampling_params import SamplingParams


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._params: dict[str, SamplingParams] = {}
        self._detokenizers: dict[tuple[str, int], IncrementalDetokenizer] = {}

    def add_request(self, request_id: str, params: SamplingParams) -> None:
        self._params[request_id] = params

    def forget(self, request_id: str) -> None:
        self._params.pop(request_id, None)
        for key in [k for k in self._detokenizers if k[0] == request_id]:
            del self._detokenizers[key]

    def process(self, events: list[TokenEvent]) -> tuple[list[StreamDelta], list[tuple[str, int]]]:
        """Returns the deltas, and the (request id, completion index) pairs a stop string just ended, which
        the core must be told to finish."""
        deltas, stopped_by_text = [], []
        ended: set[tuple[str, int]] = set()
        for event in events:
            params = self._params[event.request_id]
            key = (event.request_id, event.index)
            if key in ended:   # a step that kept several tokens (speculative decoding) ended before the last
                continue
            detokenizer = self._detokenizers.get(key)
            if detokenizer is None:
                detokenizer = IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens, params.stop)
                self._detokenizers[key] = detokenizer
            text, stopped = detokenizer.append(event.sampled.token_id)
            reason = "stop" if stopped else event.finish_reason
            if stopped and event.finish_reason is None:
                stopped_by_text.append(key)
            elif reason is not None:
                text += detokenizer.flush()
            if reason is not None:
                del self._detokenizers[key]
                ended.add(key)
            logprobs = [event.sampled] if params.logprobs is not None else None
            deltas.append(StreamDelta(event.request_id, event.index, text, [event.sampled.token_id], logprobs,
                                      reason, event.prompt_logprobs))
        return deltas, stopped_by_text
