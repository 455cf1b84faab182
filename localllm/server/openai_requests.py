"""From an OpenAI request body to what the engine takes: prompt token ids and SamplingParams, with every
refusal as a 400 naming the parameter. Sampling values are validated by SamplingParams itself."""
from __future__ import annotations

import json

from localllm.errors import one_line
from localllm.guidance import validate_guidance
from localllm.loader.fim import FimUnsupportedError, fim_prompt
from localllm.sampling_params import Guidance, SamplingParams
from localllm.server.errors import APIError
from localllm.server.openai_schemas import ChatCompletionRequest, CompletionRequest, ResponseFormat
from localllm.server.openai_tools import ToolPlan, check_tools, template_tool_calls

MAX_TOP_LOGPROBS = 20


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def reject_unsupported(body) -> None:
    if isinstance(body, ChatCompletionRequest):
        check_tools(body)
        structured = body.response_format is not None and body.response_format.type != "text"
        if structured and body.tools and body.tool_choice != "none":
            # one grammar holds the output: calls could not be written under a JSON schema, nor the answer after
            raise _bad("response_format cannot be combined with tools unless tool_choice is 'none'.",
                       "response_format", "unsupported_parameter")
    else:
        if body.echo and body.suffix:
            raise _bad("echo cannot be combined with suffix.", "echo", "unsupported_parameter")
        if body.best_of is not None and body.best_of != (1 if body.n is None else body.n):
            raise _bad("best_of other than n is not supported.", "best_of", "unsupported_parameter")


def check_generates(model) -> None:
    """An embedding model (a LoadedModel whose engine pools) is refused text generation: it is trained to make
    vectors, and may have no LM head at all."""
    if model.client.pooling is not None:
        raise _bad(f"The model '{model.name}' is an embedding model: it serves /v1/embeddings, not text generation.",
                   "model", "model_not_generative")


def sampling_params(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    if isinstance(body, ChatCompletionRequest):
        max_tokens_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if body.top_logprobs is not None and not body.logprobs:
            raise _bad("top_logprobs requires logprobs to be true.", "top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        logprobs_param, prompt_logprobs = "top_logprobs", None
    else:
        max_tokens_param, max_tokens = "max_tokens", body.max_tokens
        logprobs, logprobs_param = body.logprobs, "logprobs"
        prompt_logprobs = logprobs if body.echo else None   # an echoed prompt's tokens get logprobs too
        if body.max_tokens is None:
            max_tokens = 16   # OpenAI's default for legacy completions
        elif body.echo and body.max_tokens == 0:
            max_tokens = 1    # the prompt alone is the answer (server/echo.py drops the token)
    if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise _bad(f"{logprobs_param} must be in [0, {MAX_TOP_LOGPROBS}], got {logprobs}.", logprobs_param)
    def pick(value, default):
        return default if value is None else value
    guidance = response_guidance(body.response_format)
    try:
        return SamplingParams(
            n=pick(body.n, 1), temperature=pick(body.temperature, 1.0), top_p=pick(body.top_p, 1.0),
            top_k=pick(body.top_k, 0), min_p=pick(body.min_p, 0.0),
            repetition_penalty=pick(body.repetition_penalty, 1.0),
            presence_penalty=pick(body.presence_penalty, 0.0), frequency_penalty=pick(body.frequency_penalty, 0.0),
            seed=body.seed, max_tokens=max_tokens, min_tokens=pick(body.min_tokens, 0), stop=body.stop,
            stop_token_ids=pick(body.stop_token_ids, []), ignore_eos=pick(body.ignore_eos, False),
            logprobs=logprobs, skip_special_tokens=pick(body.skip_special_tokens, True),
            logit_bias=logit_bias(body.logit_bias), guidance=guidance,
            prompt_logprobs=prompt_logprobs)
    except ValueError as e:
        param = str(e).split(" ", 1)[0]
        param = {"max_tokens": max_tokens_param, "logprobs": logprobs_param}.get(param, param)
        raise _bad(f"{e}.", param) from None


def logit_bias(biases: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's logit_bias, keyed by token ids written as strings (JSON object keys), as SamplingParams takes it."""
    by_id = {}
    for token, bias in (biases or {}).items():
        if not token.isascii() or not token.isdigit():
            raise _bad(f"logit_bias keys must be token ids, got {token!r}.", "logit_bias")
        by_id[int(token)] = bias
    return by_id


def response_guidance(response_format: ResponseFormat | None) -> Guidance | None:
    """The grammar a response_format asks for, checked here so that a bad schema is a 400 naming the problem."""
    if response_format is None or response_format.type == "text":
        return None
    spec = response_format.json_schema
    if response_format.type == "json_object" or (spec is not None and spec.schema_ is None):
        guidance = Guidance("json_object")
    elif spec is None:
        raise _bad("response_format of type 'json_schema' needs a 'json_schema' object with the 'schema'.",
                   "response_format.json_schema", "missing_required_parameter")
    else:
        guidance = Guidance("json_schema", json.dumps(spec.schema_))
    return checked_guidance(guidance, "response_format")


def checked_guidance(guidance: Guidance, param: str) -> Guidance:
    """`guidance` once the grammar compiler accepts it; else a 400 naming `param` and the problem."""
    try:
        validate_guidance(guidance)
    except ValueError as e:
        raise _bad(f"Invalid {param}: {e}.", param) from None
    return guidance


def chat_prompt(tokenizer, body: ChatCompletionRequest, tools: ToolPlan) -> list[int]:
    """The chat-templated prompt ids, exactly as the offline LLM.chat builds them."""
    return tokenizer.encode(chat_text(tokenizer, body, tools), add_special_tokens=False)


def chat_text(tokenizer, body: ChatCompletionRequest, tools: ToolPlan) -> str:
    """The conversation rendered by the model's template; with tools, as transformers'
    apply_chat_template(messages, tools=..., add_generation_prompt=True) renders them."""
    require_template(tokenizer, body.model, "use /v1/completions")
    tools.check_supported()
    messages, template_kwargs = tools.conversation(_template_messages(body))
    return render_template(tokenizer, messages, **template_kwargs)


def require_template(tokenizer, model: str, instead: str) -> None:
    """Refuses a model without a chat template; `instead` says what it takes."""
    if not tokenizer.chat_template:
        raise _bad(f"The model '{model}' has no chat template; {instead}.", "messages")


def templated_prompt(tokenizer, model: str, messages: list[dict], instead: str, **template_kwargs) -> list[int]:
    """`messages` through the model's chat template, as token ids (other APIs' chats)."""
    require_template(tokenizer, model, instead)
    return tokenizer.encode(render_template(tokenizer, messages, **template_kwargs), add_special_tokens=False)


def render_template(tokenizer, messages: list[dict], **template_kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)
    except Exception as e:  # noqa: BLE001 - a template that refuses the conversation (e.g. role order)
        raise _bad(f"The model's chat template rejected the messages: {one_line(e)}",
                   "messages") from None


def _template_messages(body: ChatCompletionRequest) -> list[dict]:
    messages = []
    for i, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, list):
            for part in content:
                if part.type != "text" or part.text is None:
                    raise _bad(f"Only text content parts are supported, got type {part.type!r}.",
                               f"messages[{i}].content", "unsupported_content")
            content = "\n".join(part.text for part in content)
        role = "system" if message.role == "developer" else message.role
        entry = {"role": role, "content": content or ""}
        if message.tool_calls:
            entry["tool_calls"] = template_tool_calls(message, i)
        if role == "tool":
            if message.tool_call_id is None:
                raise _bad("A tool message needs the tool_call_id of the call it answers.",
                           f"messages[{i}].tool_call_id", "missing_required_parameter")
            entry["tool_call_id"] = message.tool_call_id
        messages.append(entry)
    return messages


def completion_prompts(tokenizer, body: CompletionRequest, vocab_size: int) -> list[list[int]]:
    """The prompts' token ids; with a (non-empty) suffix, fill-in-the-middle prompts of text prompts."""
    prompt = body.prompt
    if body.suffix:
        return _fim_prompts(tokenizer, body)
    if isinstance(prompt, str):
        prompts = [tokenizer.encode(prompt)]
    elif not prompt:
        raise _bad("prompt must not be empty.", "prompt")
    elif isinstance(prompt[0], str):
        prompts = [tokenizer.encode(p) for p in prompt]
    elif isinstance(prompt[0], int):
        prompts = [list(prompt)]
    else:
        prompts = [list(p) for p in prompt]
    for ids in prompts:
        check_prompt_ids(ids, vocab_size, "prompt")
    return prompts


def _fim_prompts(tokenizer, body: CompletionRequest) -> list[list[int]]:
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not texts or not all(isinstance(t, str) for t in texts):
        raise _bad("With a suffix, the prompt must be text (a string or a list of strings).", "prompt")
    try:
        return [fim_prompt(tokenizer, text, body.suffix) for text in texts]
    except FimUnsupportedError as e:
        raise _bad(f"The model '{body.model}' cannot fill in the middle: {e}.", "suffix",
                   "unsupported_parameter") from None


def check_prompt_ids(ids: list[int], vocab_size: int, param: str) -> None:
    if not ids:
        raise _bad("A prompt is empty (no tokens).", param)
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise _bad(f"Token id {bad} is outside the vocabulary (0..{vocab_size - 1}).", param)


def check_token_params(params: SamplingParams, vocab_size: int) -> None:
    """Token ids the request names beside its prompt (stop_token_ids, logit_bias), within the vocabulary."""
    for param, ids in (("stop_token_ids", params.stop_token_ids), ("logit_bias", params.logit_bias)):
        bad = next((t for t in ids if not t < vocab_size), None)
        if bad is not None:
            raise _bad(f"{param} names token id {bad}, outside the vocabulary (0..{vocab_size - 1}).", param)


def check_context(prompts: list[list[int]], max_tokens: int | None, context: int, param: str) -> None:
    """Refuses a prompt that, with the completion asked for, would not fit the model's context."""
    what = "messages" if param == "messages" else "prompt"
    for ids in prompts:
        if max_tokens is None and len(ids) >= context:
            raise _bad(f"This model's maximum context length is {context} tokens. However, your {what} "
                       f"resulted in {len(ids)} tokens, leaving none for the completion. Please reduce the "
                       f"length of the {what}.", param, "context_length_exceeded")
        if max_tokens is not None and len(ids) + max_tokens > context:
            raise _bad(f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{len(ids) + max_tokens} tokens ({len(ids)} in the {what}, {max_tokens} in the "
                       f"completion). Please reduce the length of the {what} or completion.", param,
                       "context_length_exceeded")
