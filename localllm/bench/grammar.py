"""What constrained decoding costs: `localllm bench grammar` times the engine's own grammar code (GrammarMatchers)
for N sequences under a small JSON schema, step by step, and `bench throughput --json-schema` puts every request of
a workload under that schema.

The per-step figures replay real JSON documents of the schema, tokenized by the model's tokenizer, through the
matchers: each step computes the N masks on the host, copies them to the device and applies them to [N, vocab]
logits there, and advances the matchers by their documents' next tokens (a matcher starts over when its document
ends), each phase timed apart. Replaying
fixed documents makes every run, and every grammar library, see the same token streams."""
from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from localllm.guidance import lark_json
from localllm.sampling_params import Guidance

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma", "omega")
ROLES = ("admin", "editor", "viewer")
# small, as an API client's schemas are: nested object, array, enum, bounded numbers, a pattern, required fields
BENCH_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": list(ROLES)},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["name", "age", "role", "tags", "address", "score"],
    "additionalProperties": False,
}


def bench_schema_guidance() -> Guidance:
    return Guidance("json_schema", json.dumps(BENCH_SCHEMA))


def endless_objects_guidance() -> Guidance:
    """JSON objects of BENCH_SCHEMA, one after another, with no end: the grammar never lets the sequence stop, so a
    guided request produces exactly max_tokens tokens, as an unconstrained one with ignore_eos does."""
    return Guidance("lark", f'start: "[" items\nitems: object ", " items\nobject: {lark_json(BENCH_SCHEMA)}')


def bench_documents(count: int, seed: int = 0) -> list[str]:
    """`count` JSON texts valid under BENCH_SCHEMA, as the grammar formats them."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        document = {"name": " ".join(rng.sample(WORDS, 2)).title(), "age": rng.randint(0, 120),
                    "role": rng.choice(ROLES), "tags": rng.sample(WORDS, rng.randint(0, 4)),
                    "address": {"city": rng.choice(WORDS).title(), "zip": f"{rng.randint(0, 99999):05d}"},
                    "score": rng.randint(0, 10000) / 10000}
        documents.append(json.dumps(document, separators=(", ", ": ")))
    return documents


@dataclass
class GrammarCostResult:
    model: str
    device: str
    vocab_size: int
    sequences: int
    steps: int
    tokenizer_load_ms: float     # once per engine, with its first guided request
    compile_ms: float            # once per distinct grammar
    mask_ms: float               # median per step, the N masks on the host
    mask_p90_ms: float
    mask_per_sequence_us: float
    upload_ms: float             # median per step, row index and masks copied to the device (queued, on a GPU)
    apply_ms: float              # median per step, unpacking and applying them on the device
    advance_ms: float            # median per step, advancing the N matchers by a token each, with the end checks
    host_ms: float               # median per step, all of the above


def measure_grammar_cost(model: str, model_dir: Path, vocab_size: int, eos_token_ids: set[int], device,
                         sequences: int, steps: int) -> GrammarCostResult:
    """Times the engine's own calls of a guided step, one phase after another as the engine makes them: advance
    (core._apply), masks and upload (core._sample), apply."""
    import torch

    from localllm.engine.grammar import GrammarMatchers
    from localllm.engine.request import Sequence
    from localllm.loader.tokenizer import Tokenizer
    from localllm.sampling_params import SamplingParams

    start = time.perf_counter()
    matchers = GrammarMatchers(model_dir / "tokenizer.json", eos_token_ids, vocab_size, device)
    load_s = time.perf_counter() - start
    guidance = bench_schema_guidance()
    start = time.perf_counter()
    matchers.start(guidance)
    compile_s = time.perf_counter() - start
    tokenizer = Tokenizer.from_dir(model_dir)
    streams = [tokenizer.encode(text, add_special_tokens=False) for text in bench_documents(sequences)]
    seqs = [Sequence(f"bench-{i}", [0], SamplingParams(guidance=guidance)) for i in range(sequences)]
    for seq in seqs:
        seq.matcher = matchers.start(guidance, background=False)
    positions = [0] * sequences
    logits = torch.zeros((sequences, vocab_size), device=device)

    def wait() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    times: list[tuple[float, float, float, float]] = []
    for _ in range(steps):
        began = wait()
        pending = matchers.start_masks(seqs, background=False)
        masked = wait()
        mask = pending.result()
        uploaded = wait()
        mask.apply_(logits)
        applied = wait()
        ended = matchers.advance(seqs, [streams[i][positions[i]] for i in range(sequences)])
        advanced = time.perf_counter()
        times.append((masked - began, uploaded - masked, applied - uploaded, advanced - applied))
        for i, seq in enumerate(seqs):   # not timed: the replay's own bookkeeping
            positions[i] += 1
            if seq in ended and seq.matcher.is_error():
                raise RuntimeError(f"the grammar refused document {i}: {seq.matcher.get_error()}")
            if seq in ended:   # the document is complete
                seq.matcher, positions[i] = matchers.start(guidance, background=False), 0
    warm = times[len(times) // 4:]
    mask_s, upload_s, apply_s, advance_s = (sorted(column) for column in zip(*warm))
    median_ms = [statistics.median(column) * 1000 for column in (mask_s, upload_s, apply_s, advance_s)]
    host_ms = statistics.median(sum(step) for step in warm) * 1000
    return GrammarCostResult(model, str(device), vocab_size, sequences, steps, load_s * 1000, compile_s * 1000,
                             median_ms[0], mask_s[int(0.9 * len(mask_s))] * 1000, median_ms[0] * 1000 / sequences,
                             *median_ms[1:], host_ms)
