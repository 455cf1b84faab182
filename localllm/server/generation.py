"""A text-generation call as every generation route starts it: refuse what is unsupported, check the sampling
values, load the model, build and check the prompts, submit them. /v1/chat/completions, /v1/completions and
/v1/responses (as a chat) go through `start`, then shape the deltas each its own way."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from localllm.sampling_params import SamplingParams
from localllm.server.errors import APIError
from localllm.server.jobs import Job
from localllm.server.models import LoadedModel
from localllm.server.openai_format import Choice, TokenTexts, token_texts
from localllm.server.openai_requests import (chat_prompt, check_context, check_generates, check_token_params,
                                             completion_prompts, reject_unsupported, sampling_params)
from localllm.server.openai_tools import ToolPlan, tool_plan


@dataclass
class Generation:
    model: LoadedModel
    job: Job                       # close it once the answer is sent, however it ends
    params: SamplingParams
    prompts: list[list[int]]
    tools: ToolPlan | None         # a chat's tools: what the answers' calls are read with

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))

    def texts(self) -> TokenTexts | None:
        """The tokens' texts and bytes that logprobs are shown with, where the request asked for logprobs."""
        return token_texts(self.model.client.tokenizer) if self.params.logprobs is not None else None


async def start(request, body, chat: bool) -> Generation:
    """body: a ChatCompletionRequest (chat) or a CompletionRequest. Raises APIError before anything is submitted."""
    daemon = request.app.state.daemon
    reject_unsupported(body)
    params = sampling_params(body)   # bad values fail before any model is loaded
    model = await daemon.models.acquire(body.model)
    job = Job(daemon.models, model, body.keep_alive)
    try:
        client = model.client
        check_generates(model)
        tools = tool_plan(client.tokenizer, body) if chat else None
        # a prompt of megabytes takes seconds to template and tokenize: in a thread, so others are served meanwhile
        prompts = await asyncio.to_thread(_prompts, client, body, tools)
        if tools:
            params = tools.sampling(params, client.tokenizer)
        check_context(prompts, params.max_tokens, client.info.max_model_len, "messages" if chat else "prompt")
        check_token_params(params, client.info.vocab_size)
        limit = daemon.settings.max_num_seqs + daemon.settings.max_queued
        if params.n * len(prompts) > limit:
            raise APIError(400, f"n x prompts ({params.n * len(prompts)}) is more than this server takes at once "
                                f"({limit}).", param="n", code="invalid_value")
        job.submit(prompts, params)
        daemon.metrics.prompt_tokens.labels(model.name).inc(sum(map(len, prompts)))
    except BaseException:
        job.close()
        raise
    return Generation(model, job, params, prompts, tools)


def _prompts(client, body, tools: ToolPlan | None) -> list[list[int]]:
    if tools:
        return [chat_prompt(client.tokenizer, body, tools)]
    return completion_prompts(client.tokenizer, body, client.info.vocab_size)


async def collect(job: Job, n: int) -> list[Choice]:
    """Every completion's whole text, token count, logprobs and finish reason, in order (prompt by prompt)."""
    choices = [Choice() for _ in range(len(job.requests) * n)]
    async for request, delta in job.deltas():
        choice = choices[request.tag * n + delta.index]
        choice.text += delta.text
        choice.num_tokens += len(delta.token_ids)
        if delta.logprobs:
            choice.logprobs += delta.logprobs
        if delta.prompt_logprobs is not None:
            choice.prompt_logprobs = delta.prompt_logprobs
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
    return choices
