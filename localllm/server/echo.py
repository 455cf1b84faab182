"""/v1/completions' `echo`: every choice starts with its prompt, as OpenAI's completions did, and with `logprobs` the
prompt's tokens come first in the choice's logprobs: each one's logprob under the tokens before it (the engine's
prompt_logprobs), the first token's null. With `max_tokens` 0 the answer is the prompt alone: the engine generates
one token to get there, which is left out. This is how lm-evaluation-harness and other scorers read a text's
likelihood."""
from __future__ import annotations

from dataclasses import dataclass

from localllm.engine.events import SampledToken
from localllm.server.openai_format import Choice, TokenTexts, completion_logprobs
from localllm.server.openai_schemas import CompletionRequest


@dataclass(frozen=True)
class Echo:
    texts: list[str]               # each prompt as the request gave it (token ids decoded)
    token_ids: list[list[int]]
    prompt_only: bool              # max_tokens 0: the completion is not part of the answer

    def text(self, choice: int, n: int) -> str:
        return self.texts[choice // n]

    def prompt_tokens(self, choice: int, n: int, scored: list[SampledToken] | None) -> list[SampledToken]:
        """The prompt's tokens as logprob entries: the first without a logprob, the others as the engine scored
        them (`scored`: the choice's prompt_logprobs)."""
        ids = self.token_ids[choice // n]
        return [SampledToken(ids[0], None, None), *(scored or [])] if ids else []

    def apply(self, choices: list[Choice], n: int, with_logprobs: bool) -> None:
        """Whole answers: each choice's text and logprobs behind its prompt's."""
        for i, choice in enumerate(choices):
            if self.prompt_only:   # the token generated to get here is not part of it, nor is how it ended
                choice.text, choice.logprobs, choice.num_tokens, choice.finish_reason = "", [], 0, "length"
            choice.text = self.text(i, n) + choice.text
            if with_logprobs:
                choice.logprobs = self.prompt_tokens(i, n, choice.prompt_logprobs) + choice.logprobs

    def first_chunk(self, choice: int, n: int, texts: TokenTexts | None,
                    scored: list[SampledToken] | None) -> tuple[dict, int]:
        """A stream's echo of choice `choice`, sent before its first generated text: the choice's fields, and the
        text offset its generated tokens' logprobs continue from."""
        logprobs, offset = (completion_logprobs(texts, self.prompt_tokens(choice, n, scored), 0) if texts is not None
                            else (None, 0))
        return {"index": choice, "text": self.text(choice, n), "logprobs": logprobs, "finish_reason": None}, offset


def echo_of(body: CompletionRequest, prompts: list[list[int]], tokenizer) -> Echo | None:
    if not body.echo:
        return None
    if isinstance(body.prompt, str):
        texts = [body.prompt]
    elif isinstance(body.prompt[0], str):
        texts = list(body.prompt)
    else:
        texts = [tokenizer.decode(ids, skip_special_tokens=False) for ids in prompts]
    return Echo(texts, prompts, body.max_tokens == 0)
