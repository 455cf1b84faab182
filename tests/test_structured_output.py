"""Constrained decoding through the whole engine, on a tiny random-weight model: whatever the weights, the output
parses and validates under its JSON schema, for many seeds, in batches mixed with free requests (which stay
token-identical), under preemption, with n > 1, stop strings, prefix caching and small max_tokens."""
from __future__ import annotations

import json
from concurrent.futures import Future

import jsonschema_rs
import llguidance
import pytest

from localllm import LLM, SamplingParams
from localllm.sampling_params import Guidance
from tiny_models import build_model_dir

# nested objects, arrays, enums, required fields, numbers with bounds. Strings are short and the number goes in
# steps: a random model rarely picks a closing quote, and may write a fraction's digits forever.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "ratio": {"type": "number", "minimum": -1.5, "maximum": 2.5, "multipleOf": 0.25},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 3},
        "owner": {"type": "object",
                  "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9},
                                 "admin": {"type": "boolean"}},
                  "required": ["id", "admin"], "additionalProperties": False},
    },
    "required": ["name", "age", "ratio", "color", "tags", "owner"],
    "additionalProperties": False,
}
GUIDANCE = Guidance("json_schema", json.dumps(SCHEMA))
VALIDATOR = jsonschema_rs.validator_for(SCHEMA)
PROMPTS = [[5, 17, 42, 99, 3, 7, 8], [11, 12, 13], [200, 201, 202, 203, 204, 205, 206, 207, 208]]
ENOUGH = 250   # max_tokens that every completion of these schemas reaches the end within


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir("llama", tmp_path_factory.mktemp("llama"))


# overlap: steps scheduled before the previous step's tokens are read back (the GPU default)
@pytest.fixture(scope="module", params=[False, True], ids=["sync", "overlap"])
def llm(request, model_dir):
    return LLM(str(model_dir), block_size=4, num_kv_blocks=256, overlap_steps=request.param)


@pytest.fixture(autouse=True)
def blocks_all_returned(llm):
    yield
    manager = llm.engine.core.block_manager
    assert manager.num_free_blocks == len(manager.blocks)


def guided(**kw) -> SamplingParams:
    return SamplingParams(guidance=GUIDANCE, **{"max_tokens": ENOUGH, **kw})


def assert_valid(completion) -> dict:
    assert completion.finish_reason == "stop", completion.text
    document = json.loads(completion.text)
    VALIDATOR.validate(document)
    return document


def test_every_seed_gives_a_valid_document(llm):
    params = [guided(temperature=1.0, seed=seed) for seed in range(24)]
    outputs = llm.generate([PROMPTS[seed % 3] for seed in range(24)], params)
    documents = [assert_valid(o.outputs[0]) for o in outputs]
    assert len({json.dumps(d) for d in documents}) > 20   # sampled, not one answer forced
    assert {d["color"] for d in documents} == {"red", "green", "blue"}


def test_free_requests_batched_with_guided_ones_are_token_identical(llm):
    free = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    alone = llm.generate(PROMPTS, free)
    mixed = llm.generate(PROMPTS + PROMPTS, [free] * 3 + [guided(temperature=1.0, seed=i) for i in range(3)])
    assert [o.outputs[0].token_ids for o in mixed[:3]] == [o.outputs[0].token_ids for o in alone]
    for o in mixed[3:]:
        assert_valid(o.outputs[0])


def test_greedy_guided_output_is_the_same_alone_and_in_a_batch(llm):
    alone = llm.generate([PROMPTS[0]], guided(temperature=0))[0].outputs[0]
    batch = llm.generate(PROMPTS, [guided(temperature=0)] * 3)
    assert_valid(alone)
    assert batch[0].outputs[0].token_ids == alone.token_ids


def test_n_completions_each_follow_the_schema(llm):
    out = llm.generate([PROMPTS[1]], guided(n=4, temperature=1.0, seed=7))[0]
    documents = [assert_valid(c) for c in out.outputs]
    assert len({json.dumps(d) for d in documents}) == 4


def test_max_tokens_cut_ends_with_length(llm):
    out = llm.generate([PROMPTS[0]], guided(temperature=0, max_tokens=5))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5
    full = llm.generate([PROMPTS[0]], guided(temperature=0))[0].outputs[0]
    assert full.text.startswith(out.text) and '{"name": "'.startswith(out.text)   # the grammar's forced start


def test_a_stop_string_cuts_the_document(llm):
    out = llm.generate([PROMPTS[0]], guided(temperature=0, stop=['"age"']))[0].outputs[0]
    assert out.finish_reason == "stop" and out.text.startswith('{"name": "') and out.text.endswith(", ")


def test_the_end_of_sequence_comes_only_where_the_grammar_allows_it(llm, model_dir):
    # digits then ';' and the grammar may end; greedy on a random model would rarely stop by itself
    grammar = Guidance("lark", 'start: /[0-9]{1,3}/ ";" ("x" ";")*')
    eos = llm.engine.tokenizer.eos_token_id
    for seed in range(6):
        out = llm.generate([PROMPTS[2]], SamplingParams(temperature=1.0, seed=seed, max_tokens=60,
                                                        guidance=grammar, skip_special_tokens=False))[0].outputs[0]
        text = out.text.removesuffix(llm.engine.tokenizer.convert_ids_to_tokens(eos))
        head, *rest = text.split(";")
        assert head.isdigit() and 1 <= len(head) <= 3 and all(part == "x" for part in rest[:-1]), text
        if out.finish_reason == "stop":
            assert rest[-1] == "" and out.token_ids[-1] == eos
        else:
            assert out.finish_reason == "length" and eos not in out.token_ids


def test_a_bad_grammar_is_refused_and_the_engine_goes_on(llm):
    with pytest.raises(ValueError, match="the JSON schema is invalid or unsupported: .*uniqueItems"):
        llm.generate([PROMPTS[0]], SamplingParams(guidance=Guidance("json_schema", '{"uniqueItems": true}')))
    assert_valid(llm.generate([PROMPTS[0]], guided(temperature=0))[0].outputs[0])


def test_a_grammar_seen_before_compiles_while_the_prompt_is_computed(llm):
    """The first request with a grammar compiles it at once (a bad one is refused there); a later one with the
    same grammar gets its matcher from the compile pool, and samples the same tokens."""
    grammar = Guidance("lark", 'start: "ab"+ "c"')   # new to this engine
    core = llm.engine.core
    params = SamplingParams(temperature=0, max_tokens=12, guidance=grammar)
    for request_id in ("first", "second"):
        core.add_request(request_id, PROMPTS[1], params)
    first, second = core.requests["first"][0], core.requests["second"][0]
    assert isinstance(first.matcher, llguidance.LLMatcher) and isinstance(second.matcher, Future)
    tokens = {"first": [], "second": []}
    while core.has_unfinished:
        for event in core.step():
            tokens[event.request_id].append(event.sampled.token_id)
    assert tokens["first"] == tokens["second"] and tokens["first"]
    assert isinstance(second.matcher, llguidance.LLMatcher) and not second.matcher.is_error()


def test_prefix_cache_hits_do_not_change_the_output(llm):
    prompt = list(range(60, 90))
    first = llm.generate([prompt], guided(temperature=0))[0].outputs[0]
    hits = llm.engine.core.block_manager.stats.hits
    second = llm.generate([prompt], guided(temperature=0))[0].outputs[0]
    assert llm.engine.core.block_manager.stats.hits > hits
    assert second.token_ids == first.token_ids
    assert_valid(second)


def test_preempted_sequences_keep_their_grammar_state(llm, model_dir):
    """Too few blocks for every sequence at once: some are preempted and recomputed midway, and still produce
    the documents they produce unhindered."""
    params = [guided(temperature=1.0, seed=seed) for seed in range(6)]
    prompts = [PROMPTS[seed % 3] for seed in range(6)]
    expected = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    tight = LLM(str(model_dir), block_size=4, num_kv_blocks=90, max_num_batched_tokens=64,
                overlap_steps=llm.engine.config.overlap_steps)
    outputs = tight.generate(prompts, params)
    assert tight.engine.core.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outputs] == expected
    for o in outputs:
        assert_valid(o.outputs[0])
