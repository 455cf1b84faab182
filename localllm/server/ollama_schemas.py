"""Request bodies of the Ollama API, read as Ollama's server reads them: `options` holds a Modelfile's
parameters, `keep_alive` is a duration ("5m", "1h30m", "-1") or a number of seconds, `stream` is true unless it
is false, a model may be named by `model` or by the older `name`. Types are strict (a string is not a number;
an integer is a float); fields and options that are not listed are ignored, as Ollama ignores them."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from localllm.durations import parse_duration
from localllm.server.openai_schemas import Seed, Text, Tool
from localllm.server.settings import check_keep_alive


def _seconds(value: Any) -> Any:
    """A duration string to seconds; numbers (and anything else, for the type check) pass as they are."""
    if isinstance(value, str):
        return parse_duration(value)
    return value


# seconds to keep the model loaded after this request; 0 = unload at once, < 0 = forever
KeepAlive = Annotated[float, BeforeValidator(_seconds), Field(allow_inf_nan=False), AfterValidator(check_keep_alive)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


# Ollama's defaults for the sampling options a request leaves out, which its clients count on
DEFAULT_OPTIONS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}


class Options(_Body):
    """The parameters localllm applies; Ollama's others (num_gpu, num_thread, mirostat, typical_p, ...) are
    accepted and ignored."""
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    seed: Optional[int] = Seed
    stop: Optional[Union[Text, list[Text]]] = None
    num_predict: Optional[int] = None
    num_ctx: Optional[int] = None
    repeat_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None


class _Named(_Body):
    model: Optional[Text] = None
    name: Optional[Text] = None          # what older clients send

    @property
    def model_name(self) -> Optional[str]:
        return self.model or self.name


class _Generation(_Named):
    options: Optional[Options] = None
    format: Optional[Union[Text, dict]] = None
    stream: Optional[bool] = None
    keep_alive: Optional[KeepAlive] = None
    think: Optional[Union[bool, Text]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None   # alternatives per token with logprobs, 0-20


class CalledFunction(_Body):
    name: Text
    arguments: dict = Field(default_factory=dict)   # an object, not a JSON string as in OpenAI's API


class ToolCall(_Body):
    function: CalledFunction


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[Text] = None
    images: Optional[list] = None
    tool_calls: Optional[list[ToolCall]] = None     # an assistant's earlier calls
    tool_name: Optional[Text] = None                # the function a tool message answers for


class ChatRequest(_Generation):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hello!"}], "stream": False}]})
    messages: Optional[list[ChatMessage]] = None
    tools: Optional[list[Tool]] = None              # OpenAI's shape, which is Ollama's


class GenerateRequest(_Generation):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "smollm2:135m", "prompt": "Why is the sky blue?", "stream": False}]})
    prompt: Optional[Text] = None
    suffix: Optional[Text] = None
    system: Optional[Text] = None
    template: Optional[Text] = None
    context: Optional[list[int]] = None
    raw: Optional[bool] = None
    images: Optional[list] = None


class ShowRequest(_Named):
    verbose: Optional[bool] = None


class PullRequest(_Named):
    stream: Optional[bool] = None
    insecure: Optional[bool] = None      # accepted; the Hub is always reached over the endpoint configured
    revision: Optional[Text] = None      # localllm's: a branch, tag or commit of the Hub repo


class DeleteRequest(_Named):
    pass


class CopyRequest(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"source": "qwen3:0.6b", "destination": "mine"}]})
    source: Text
    destination: Text


class EmbedRequest(_Named):
    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "qwen3-embedding:0.6b", "input": "Hello!"}]})
    input: Union[Text, list[Text]]
    truncate: Optional[bool] = None      # None: true, as Ollama
    dimensions: Optional[int] = None
    options: Optional[dict] = None       # accepted; sampling options mean nothing to an embedding
    keep_alive: Optional[KeepAlive] = None


class EmbeddingsRequest(_Named):
    """The older /api/embeddings: one prompt, one vector."""
    prompt: Text
    options: Optional[dict] = None
    keep_alive: Optional[KeepAlive] = None
