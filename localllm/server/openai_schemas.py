"""Request bodies of the OpenAI-compatible API, with the vLLM-style extra sampling fields. Types are strict
(a string is not a number); unknown fields are ignored, as `user` is; every optional field takes null for its
default, as OpenAI's API does."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from localllm.server.settings import MAX_KEEP_ALIVE_S

from localllm.sampling_params import MAX_SEED, MIN_SEED

Seed = Field(default=None, ge=MIN_SEED, le=MAX_SEED)


def _encodable(text: str) -> str:
    """JSON may carry a lone UTF-16 surrogate ("\\ud800"), which no tokenizer or UTF-8 writer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the text is not valid Unicode (a lone surrogate at index {e.start})") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]   # every string of a request body
# seconds to keep the model loaded after this request; 0 = unload at once, < 0 = forever
KeepAlive = Annotated[float, Field(allow_inf_nan=False, le=MAX_KEEP_ALIVE_S)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: Optional[bool] = False


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: Text = "response"
    description: Optional[Text] = None
    # `schema` would shadow a BaseModel attribute; the wire name stays "schema"
    schema_: Optional[dict] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: free text, any JSON object, or JSON following a schema."""
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JSONSchemaFormat] = None


class SamplingExtras(BaseModel):
    """Sampling fields every generation route takes: OpenAI's chat ones that /v1/responses lacks, and the engine
    extras (vLLM-style), e.g. extra_body={"top_k": 40} with the openai client."""
    model_config = ConfigDict(extra="ignore", strict=True)

    seed: Optional[int] = Seed
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    ignore_eos: Optional[bool] = None
    min_tokens: Optional[int] = None
    stop_token_ids: Optional[list[int]] = None
    skip_special_tokens: Optional[bool] = None
    keep_alive: Optional[KeepAlive] = None


class _Sampling(SamplingExtras):
    model: Text
    n: Optional[int] = None                      # 1
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None          # OpenAI's default is 1
    top_p: Optional[float] = None
    stop: Optional[Union[Text, list[Text]]] = None
    logit_bias: Optional[dict[str, float]] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[Text] = None
    response_format: Optional[ResponseFormat] = None   # also on /v1/completions, as vLLM takes it


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Text
    text: Optional[Text] = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: Text
    description: Optional[Text] = None
    parameters: Optional[dict] = None        # a JSON schema for the arguments object; none = no arguments
    strict: Optional[bool] = None            # calls are always valid against the schema under tool_choice required


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: Text


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    function: FunctionName


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: Text
    arguments: Text                          # a JSON object, as a string


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    id: Text
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[Text, list[TextPart]]] = None
    name: Optional[Text] = None
    tool_calls: Optional[list[ToolCall]] = None     # an assistant's calls
    tool_call_id: Optional[Text] = None             # which call a tool message answers


class ChatCompletionRequest(_Sampling):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}]})
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    functions: Optional[list] = None


class CompletionRequest(_Sampling):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "smollm2:135m", "prompt": "Once upon a time", "max_tokens": 8}]})
    prompt: Union[Text, list[Text], list[int], list[list[int]]]
    logprobs: Optional[int] = None
    echo: Optional[bool] = False
    suffix: Optional[Text] = None
    best_of: Optional[int] = None


class ResponseContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Text                     # input_text or output_text (an earlier answer); nothing else is supported
    text: Optional[Text] = None


class ResponseInputItem(BaseModel):
    """An item of a /v1/responses `input` list: a message (the only kind supported)."""
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Optional[Text] = None    # "message", or left out
    role: Optional[Literal["user", "assistant", "system", "developer"]] = None
    content: Optional[Union[Text, list[ResponseContentPart]]] = None


class ResponseTextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    format: Optional[dict] = None   # {"type": "text"} (the default); other formats go to chat's response_format


class ResponsesRequest(SamplingExtras):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "smollm2:135m", "input": "Hello!", "instructions": "Be brief.", "max_output_tokens": 8}]})
    model: Text
    input: Union[Text, list[ResponseInputItem]]
    instructions: Optional[Text] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stream: Optional[bool] = False
    previous_response_id: Optional[Text] = None
    store: Optional[bool] = None                 # None = true, as OpenAI
    metadata: Optional[dict[str, Text]] = None
    user: Optional[Text] = None
    text: Optional[ResponseTextConfig] = None
    tools: Optional[list] = None
    tool_choice: Optional[Union[Text, dict]] = None
    parallel_tool_calls: Optional[bool] = None
    top_logprobs: Optional[int] = None
    include: Optional[list[Text]] = None
    background: Optional[bool] = None
    conversation: Optional[Union[Text, dict]] = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"examples": [
        {"model": "qwen3-embedding:0.6b", "input": ["The quick brown fox", "Paged attention"]}]})
    model: Text
    input: Union[Text, list[Text], list[int], list[list[int]]]
    encoding_format: Optional[Literal["float", "base64"]] = None   # None = float
    dimensions: Optional[int] = Field(default=None, ge=1)
    user: Optional[Text] = None
    keep_alive: Optional[KeepAlive] = None


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: Text
