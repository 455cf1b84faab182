"""llguidance beside xgrammar on the same work: the small JSON schema of `localllm bench grammar`, the model's
tokenizer, N matchers each replaying a JSON document of the schema token by token. Per step, one batched call fills
the N token bitmasks (llguidance's LLExecutor, xgrammar's BatchGrammarMatcher, each on its default threads); then
each matcher takes its document's next token. Also times reading the tokenizer and compiling the schema, and
checks which JSON-schema keywords each library refuses, or compiles while not enforcing them.

xgrammar is not a dependency of localllm (it imports torch, so the front end could not use it): install it
beside this script, e.g. `pip install --target /tmp/xgr xgrammar apache-tvm-ffi` then PYTHONPATH=/tmp/xgr.

    OMP_WAIT_POLICY=PASSIVE python scripts/grammar_libraries.py --sequences 16,256 --steps 200
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import llguidance
import llguidance.numpy

from localllm.bench.grammar import BENCH_SCHEMA, bench_documents
from localllm.guidance import JSON_FORMAT
from localllm.loader.hf_dir import open_model

# keywords beyond the common core, each with a document that breaks it (and would pass without the keyword)
KEYWORDS = {
    "uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 1]"),
    "not": ({"not": {"type": "string"}}, '"text"'),
    "if/then": ({"if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}}, '{"a": 1}'),
    "minProperties": ({"type": "object", "minProperties": 2}, '{"a": 1}'),
    "dependentRequired": ({"type": "object", "dependentRequired": {"a": ["b"]}}, '{"a": 1}'),
}


def replay(fill, advance, reset, streams: list[list[int]], steps: int) -> list[float]:
    """Seconds of each step's batched mask fill; documents start over when they end."""
    positions = [0] * len(streams)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        fill()
        times.append(time.perf_counter() - began)
        for i, stream in enumerate(streams):
            if not advance(i, stream[positions[i]]):
                raise RuntimeError(f"document {i} refused at token {positions[i]}")
            positions[i] += 1
            if positions[i] == len(stream):
                reset(i)
                positions[i] = 0
    return times


def run_llguidance(files, streams: list[list[int]], steps: int) -> tuple[float, float, list[float]]:
    began = time.perf_counter()
    tokenizer = llguidance.LLTokenizer((files.model_dir / "tokenizer.json").read_text(),
                                       n_vocab=files.hf_config.vocab_size, eos_token=sorted(files.eos_token_ids))
    load = time.perf_counter() - began
    began = time.perf_counter()
    start = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(BENCH_SCHEMA), defaults=JSON_FORMAT))
    compile_s = time.perf_counter() - began
    matchers = [start.deep_copy() for _ in streams]
    executor = llguidance.LLExecutor()
    bits = llguidance.numpy.allocate_token_bitmask(len(streams), files.hf_config.vocab_size)

    def reset(i):
        matchers[i] = start.deep_copy()

    times = replay(lambda: llguidance.numpy.fill_next_token_bitmask_par(
        executor, [(m, i) for i, m in enumerate(matchers)], bits),
        lambda i, token: matchers[i].consume_token(token), reset, streams, steps)
    return load, compile_s, times


def _xgrammar_compiler(files):
    import xgrammar
    from transformers import PreTrainedTokenizerFast

    from localllm.loader.tokenizer import Tokenizer

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_dir(files.model_dir).backend_tokenizer)
    info = xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=files.hf_config.vocab_size,
                                                   stop_token_ids=sorted(files.eos_token_ids))
    return xgrammar.GrammarCompiler(info, cache_enabled=False)


def run_xgrammar(files, streams: list[list[int]], steps: int) -> tuple[float, float, list[float]]:
    import xgrammar

    began = time.perf_counter()
    compiler = _xgrammar_compiler(files)
    load = time.perf_counter() - began
    began = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(BENCH_SCHEMA), any_whitespace=False,
                                            separators=(JSON_FORMAT["item_separator"], JSON_FORMAT["key_separator"]))
    compile_s = time.perf_counter() - began
    matchers = [xgrammar.GrammarMatcher(compiled) for _ in streams]
    batch = xgrammar.BatchGrammarMatcher()
    bits = xgrammar.allocate_token_bitmask(len(streams), files.hf_config.vocab_size)
    times = replay(lambda: batch.batch_fill_next_token_bitmask(matchers, bits),
                   lambda i, token: matchers[i].accept_token(token), lambda i: matchers[i].reset(), streams, steps)
    return load, compile_s, times


def keyword_support(files) -> dict[str, tuple[str, str]]:
    """Per keyword: what each library does with it (refused, enforced, or compiled but not enforced)."""
    import xgrammar

    compiler = _xgrammar_compiler(files)
    tokenizer = llguidance.LLTokenizer((files.model_dir / "tokenizer.json").read_text())
    support = {}
    for name, (schema, breaking) in KEYWORDS.items():
        matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema)))
        if matcher.is_error():
            llg = "refused"
        else:
            accepted = matcher.consume_tokens(tokenizer.tokenize_str(breaking)) and matcher.is_accepting()
            llg = "not enforced" if accepted else "enforced"
        try:
            x = xgrammar.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema)))
            xgr = "not enforced" if x.accept_string(breaking) and x.is_completed() else "enforced"
        except RuntimeError:
            xgr = "refused"
        support[name] = (llg, xgr)
    return support


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="whose tokenizer (default: the embedded model)")
    parser.add_argument("--sequences", default="16,256")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    files = open_model(args.model)
    from localllm.loader.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(files.model_dir)
    for count in (int(n) for n in args.sequences.split(",")):
        streams = [tokenizer.encode(text, add_special_tokens=False) for text in bench_documents(count)]
        for name, run in (("llguidance", run_llguidance), ("xgrammar", run_xgrammar)):
            load, compile_s, times = run(files, streams, args.steps)
            warm = sorted(times[len(times) // 4:])
            print(f"{name:10s} N={count:3d}: tokenizer {load * 1e3:6.0f} ms, schema compile {compile_s * 1e3:6.1f} ms, "
                  f"mask/step median {statistics.median(warm) * 1e3:6.2f} ms, p90 "
                  f"{warm[int(0.9 * len(warm))] * 1e3:6.2f} ms, per sequence "
                  f"{statistics.median(warm) * 1e6 / count:6.1f} us")
    for name, (llg, xgr) in keyword_support(files).items():
        print(f"{name:18s} llguidance: {llg:13s} xgrammar: {xgr}")


if __name__ == "__main__":
    main()
