"""Per-request sampling settings, validated once at the door."""
from __future__ import annotations

from dataclasses import dataclass, field

# Below this, a temperature samples greedily: logits divided by it overflow float32 (and 1e-300 rounds to 0), while
# the distribution it asks for is already the argmax but for logits tied to within 1e-5.
GREEDY_BELOW_TEMPERATURE = 1e-5
# Above this, every token is within a hair of equally likely for real logits (a spread of 30 becomes 0.3), so
# larger values would only open the way to overflow (1e300 is infinite in float32).
MAX_TEMPERATURE = 100.0
# A seen token's logit is divided or multiplied by the penalty; beyond these the effect is saturated, and
# 1e-300 or 1e300 are 0 and infinity in float32.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0
# torch seeds are 64-bit; completion i of a seeded request draws from seed + i.
MIN_SEED, MAX_SEED = -(2 ** 63), 2 ** 63 - 1
# OpenAI's range for a logit_bias value: -100 bans a token in practice, 100 all but forces it.
MAX_LOGIT_BIAS = 100.0
GUIDANCE_KINDS = ("json_object", "json_schema", "lark")
_GUIDANCE_VALUES = {"json_schema": "JSON schema (as JSON text)", "lark": "Lark grammar"}


@dataclass(frozen=True)
class Guidance:
    """A grammar the output must follow (constrained decoding): "json_object" (any JSON object), "json_schema"
    (value: the schema as JSON text) or "lark" (value: an llguidance Lark grammar, which may embed %json{...}).
    localllm.guidance.validate_guidance checks that the grammar compiles."""
    kind: str
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GUIDANCE_KINDS:
            raise ValueError(f"guidance kind must be one of {', '.join(GUIDANCE_KINDS)}, got {self.kind!r}")
        if self.kind != "json_object" and not self.value:
            raise ValueError(f"guidance of kind {self.kind!r} needs its {_GUIDANCE_VALUES[self.kind]} as the value")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0          # 0 (or below GREEDY_BELOW_TEMPERATURE) = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 or -1 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0   # HF semantics, over prompt and output tokens
    presence_penalty: float = 0.0     # OpenAI semantics, over output tokens
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 256      # None = up to the model length
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None       # None = off; k = the sampled token's logprob plus the top k
    logit_bias: dict[int, float] = field(default_factory=dict)   # token id -> added to its logit before sampling
    prompt_logprobs: int | None = None   # None = off; k = each prompt token's logprob (from the second) plus the top k
    skip_special_tokens: bool = True
    guidance: Guidance | None = None  # None = free text

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids)
        self.logit_bias = dict(self.logit_bias or {})
        if self.top_k == -1:
            self.top_k = 0
        bad_biases = [b for b in self.logit_bias.values() if not -MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS]
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            # written as ranges, so that NaN (which compares false) is refused along with infinities
            (0.0 <= self.temperature <= MAX_TEMPERATURE,
             f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be -1, 0 or positive, got {self.top_k}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY,
             f"repetition_penalty must be in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}], "
             f"got {self.repetition_penalty}"),
            (-2.0 <= self.presence_penalty <= 2.0, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2.0 <= self.frequency_penalty <= 2.0, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (self.seed is None or MIN_SEED <= self.seed <= MAX_SEED,
             f"seed must be in [-2**63, 2**63 - 1], got {self.seed}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}"),
            (self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"),
            (all(t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids must not be negative, got {self.stop_token_ids}"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, f"logprobs must be in [0, 20], got {self.logprobs}"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
             f"prompt_logprobs must be in [0, 20], got {self.prompt_logprobs}"),
            (all(type(t) is int and t >= 0 for t in self.logit_bias),
             f"logit_bias must map token ids (integers >= 0) to biases, got keys {list(self.logit_bias)[:3]}"),
            (not bad_biases, f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got "
                             f"{bad_biases[:1]}"),
            # under a grammar, the grammar decides where the output ends
            (self.guidance is None or not self.ignore_eos, "ignore_eos cannot be combined with guidance"),
            (self.guidance is None or self.min_tokens == 0, "min_tokens cannot be combined with guidance"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE
