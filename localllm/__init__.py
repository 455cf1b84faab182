"""localllm: a local LLM runner with its own paged-KV, continuous-batching engine."""
from localllm.config import Config
from localllm.sampling_params import SamplingParams

__all__ = ["LLM", "Config", "SamplingParams"]


def __getattr__(name):
    # importing torch and the engine takes seconds; `import localllm` for the CLI's --help should not
    if name == "LLM":
        from localllm.engine.llm import LLM
        return LLM
    raise AttributeError(name)
