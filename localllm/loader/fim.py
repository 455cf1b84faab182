"""Fill-in-the-middle prompts: the code before and after a gap, in the layout a code model was trained on, so that
what it generates is the middle. A model can fill in when its tokenizer's vocabulary has one of the known sets of
FIM tokens (FORMATS). Torch-free: the daemon's front end builds these prompts for /v1/completions with a `suffix`
(and /api/generate with one)."""
from __future__ import annotations

from dataclasses import dataclass

from localllm.errors import LocalLLMError


class FimUnsupportedError(LocalLLMError):
    """The model's tokenizer has no fill-in-the-middle tokens."""


@dataclass(frozen=True)
class FimFormat:
    prefix: str                   # the tokens' text as the vocabulary spells them
    suffix: str
    middle: str | None            # None: the prompt ends with the prefix (suffix-first layout)
    suffix_first: bool = False    # SPM: suffix, then prefix; else PSM: prefix, suffix, middle
    models: str = ""


FORMATS = (
    FimFormat("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", models="Qwen2.5-Coder, CodeGemma"),
    FimFormat("<fim_prefix>", "<fim_suffix>", "<fim_middle>", models="StarCoder, StarCoder2, Granite Code"),
    FimFormat("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", models="DeepSeek-Coder"),
    FimFormat("[PREFIX]", "[SUFFIX]", None, suffix_first=True, models="Codestral"),
)


@dataclass(frozen=True)
class FimTokens:
    prefix_id: int
    suffix_id: int
    middle_id: int | None
    suffix_first: bool


def fim_tokens(tokenizer) -> FimTokens | None:
    """The model's FIM token ids (the first of FORMATS whose tokens are all in its vocabulary), or None."""
    for fmt in FORMATS:
        names = [fmt.prefix, fmt.suffix] + ([fmt.middle] if fmt.middle else [])
        ids = [tokenizer.convert_tokens_to_ids(name) for name in names]
        if all(i is not None for i in ids):
            return FimTokens(ids[0], ids[1], ids[2] if fmt.middle else None, fmt.suffix_first)
    return None


def fim_prompt(tokenizer, prefix: str, suffix: str) -> list[int]:
    """The prompt token ids that ask the model for what goes between `prefix` and `suffix`: the tokens the tokenizer
    puts before any text (a BOS), then the FIM tokens around the two texts, each text encoded on its own (as
    llama.cpp's infill does, so no token spans a boundary). Raises FimUnsupportedError for a model without FIM
    tokens."""
    tokens = fim_tokens(tokenizer)
    if tokens is None:
        known = "; ".join(f"{f.prefix} {f.suffix} {f.middle or ''} ({f.models})".replace("  ", " ") for f in FORMATS)
        raise FimUnsupportedError(f"the model's tokenizer has no fill-in-the-middle tokens (known: {known})")
    before = [tokens.prefix_id, *tokenizer.encode(prefix, add_special_tokens=False)]
    after = [tokens.suffix_id, *tokenizer.encode(suffix, add_special_tokens=False)]
    body = after + before if tokens.suffix_first else before + after + [tokens.middle_id]
    return leading_special_ids(tokenizer) + body


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer's post-processor puts before a text (a BOS; none for most chat models)."""
    plain = tokenizer.encode("x", add_special_tokens=False)
    full = tokenizer.encode("x", add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []
