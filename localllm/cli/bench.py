"""`localllm bench latency|throughput|sweep|grammar`: measure a runtime (ours, or transformers for comparison) beside
the roofline of the device it runs on, or what constrained decoding costs, and print a table (and JSON on request)."""
from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Optional

import typer

from localllm.cli.daemon import KV_CACHE_DTYPE_HELP
from localllm.errors import LocalLLMError, one_line

bench_app = typer.Typer(help="Measure latency, throughput and a batch-size sweep beside the roofline, and the cost "
                             "of constrained decoding.",
                        no_args_is_help=True)

BACKENDS = ("localllm", "hf")
DEFAULT_SWEEP = "1,2,4,8,16,32,64,128,256"

ModelArg = typer.Option(None, "--model", "-m", help="Model alias, .gguf file or directory; default: the embedded one.")
DtypeOpt = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16.")
RandomOpt = typer.Option(None, "--random-weights", help="Build qwen3-0.6b, llama-3.2-1b, llama-3.1-8b, qwen3-8b, "
                                                        "qwen2.5-32b or llama-3.1-70b from its real config with "
                                                        "random weights instead of loading one.")
QuantizeOpt = typer.Option("auto", "--quantize", help="How weights are stored: auto, none, native, fast, or a format "
                                                      "(q4_k_m, q8_0, q4_0, int4 = awq, fp8, ...): random weights are "
                                                      "drawn in it, a checkpoint is quantized to it at load.")
KvBlocksOpt = typer.Option(None, "--num-kv-blocks", min=1, help="Fix the KV pool's size (blocks of 16 tokens) "
                                                                "instead of filling the free memory.")
TpOpt = typer.Option(None, "--tp", min=1, help="Tensor-parallel degree (GPUs); default: the fewest that fit.")
AllreduceOpt = typer.Option("nccl", "--allreduce", help="All-reduce of the ranks: nccl, symm_mem (torch symmetric "
                                                        "memory up to 10 MiB) or fused (one-token steps' done "
                                                        "by the GEMV and the norm after it).")
BackendOpt = typer.Option("localllm", "--backend", help="localllm (this engine) or hf (transformers as the runtime).")
JsonOpt = typer.Option(None, "--json-out", help="Also write the result as JSON to this file.")
MaxLenOpt = typer.Option(4096, "--max-model-len", help="Context length the engine is set up for.")
SpeculativeOpt = typer.Option("off", "--speculative", help="Speculative decoding: off, ngram or draft:MODEL.")
SpecTokensOpt = typer.Option(4, "--num-speculative-tokens", min=1, help="Most draft tokens verified per step.")
KvCacheDtypeOpt = typer.Option("auto", "--kv-cache-dtype", help=KV_CACHE_DTYPE_HELP)
SpecAcceptOpt = typer.Option(None, "--spec-accept-prob", min=0.0, max=1.0,
                             help="Random weights accept nothing: accept each draft with this probability instead "
                                  "(drafts then copy the prompt from its start when nothing matches).")


def _fail(error: Exception) -> None:
    typer.echo(f"Error: {one_line(error)}", err=True)
    raise typer.Exit(1)


def _check_backend(backend: str, quantize: str = "auto", kv_cache_dtype: str = "auto") -> None:
    """Refuses what no backend can run before any model is loaded."""
    from localllm.config import Config

    if backend not in BACKENDS:
        raise ValueError(f"unknown --backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "hf" and quantize not in ("auto", "none"):
        raise ValueError("--quantize applies to --backend localllm only")
    Config(kv_cache_dtype=kv_cache_dtype)
    if backend == "hf" and kv_cache_dtype != "auto":
        raise ValueError("--kv-cache-dtype applies to --backend localllm only")


def _prepare(model: str | None, random_weights: str | None, dtype: str, quantize: str = "auto"):
    """The model to build, the device's limits, measured before anything is loaded onto it, and how its weights
    are stored (quant_choice: what `auto` means here)."""
    from localllm.bench.device_limits import measure_device
    from localllm.bench.models import open_bench_model
    from localllm.config import Config
    from localllm.engine.core import keeps_gguf_blocks, resolve_device, resolve_dtype
    from localllm.engine.quant_choice import settle_quantization

    config = Config(dtype=dtype, quantization=quantize)
    if random_weights is None:
        config = settle_quantization(config, model)
    bench_model = open_bench_model(model, random_weights, keeps_gguf_blocks(config))
    device = resolve_device(config)
    torch_dtype = resolve_dtype(config, device)
    return bench_model, device, torch_dtype, measure_device(device, torch_dtype), config.quantization


def _load(backend: str, bench_model, dtype: str, device, torch_dtype, **config):
    from localllm.config import Config

    if backend == "hf":
        if config.pop("quantization", "auto") not in ("auto", "none"):
            raise ValueError("--quantize applies to --backend localllm only")
        # checked before; transformers keeps its own KV cache (--compare-hf beside an fp8 one)
        for key in ("speculative", "num_speculative_tokens", "speculative_accept_prob", "kv_cache_dtype"):
            config.pop(key, None)
        from localllm.bench.hf_backend import HFBackend

        batch_tokens = config.get("max_num_batched_tokens", Config().max_num_batched_tokens)
        return HFBackend(bench_model, device, torch_dtype, batch_tokens)
    from localllm.bench.engine_backend import EngineBackend

    return EngineBackend(bench_model, dtype, **config)


def _closed(runtime) -> None:
    """Stops a backend's tensor-parallel workers (transformers has none)."""
    close = getattr(runtime, "close", None)
    if close is not None:
        close()


def _free_device_memory(device) -> None:
    """Once the last reference to a backend is gone: give its memory back before the next backend sizes its KV
    cache from what is free (CUDA graphs and the caching allocator hold on to it otherwise)."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


def _print(table) -> None:
    """Prints a rich table. rich is imported by the commands that print one, not with the command line, which
    every command and the daemon import (its console alone is ~25 ms of each start)."""
    from rich.console import Console

    Console().print(table)


def _report(result, json_out: Path | None) -> None:
    from rich.table import Table

    from localllm.bench.measure import as_dict

    fields = as_dict(result)
    table = Table(show_header=False, box=None)
    for key, value in fields.items():
        for name, item in (value.items() if isinstance(value, dict) else [(None, value)]):
            table.add_row(f"{key}.{name}" if name else key, _cell(item))
    _print(table)
    _write_json(fields, json_out)


def _check_speculation(backend: str, speculative: str, num_tokens: int, accept_prob: float | None) -> None:
    """Before anything is loaded: the settings are valid, and only this engine speculates."""
    from localllm.config import Config

    Config(speculative=speculative, num_speculative_tokens=num_tokens, speculative_accept_prob=accept_prob)
    if backend != "localllm" and speculative != "off":
        raise ValueError("--speculative applies to --backend localllm only")


def _check_new_tokens(new_tokens: int) -> None:
    if new_tokens < 2:
        raise ValueError("--new-tokens must be at least 2: decode is timed from the first token to the last")


def _write_json(fields: dict, json_out: Path | None) -> None:
    if json_out:
        json_out.write_text(json.dumps(fields, indent=2) + "\n")


@bench_app.command(short_help="Batch-1 decode speed and time to first token.")
def latency(
    model: Optional[str] = ModelArg,
    random_weights: Optional[str] = RandomOpt,
    backend: str = BackendOpt,
    dtype: str = DtypeOpt,
    max_model_len: int = MaxLenOpt,
    prompt_tokens: int = typer.Option(128, help="Prompt length of the decode run."),
    new_tokens: int = typer.Option(256, help="Tokens generated in the decode run (at least 2)."),
    ttft_prompt_tokens: int = typer.Option(1024, help="Prompt length of the time-to-first-token runs (median of 5 after one untimed)."),
    tp: Optional[int] = TpOpt,
    allreduce: str = AllreduceOpt,
    quantize: str = QuantizeOpt,
    num_kv_blocks: Optional[int] = KvBlocksOpt,
    workload: str = typer.Option("random", "--workload", help="The decode run's prompt: random (prompt-tokens "
                                 "random ids) or code-edit (a ~1,500-token source file to rewrite; with "
                                 "--random-weights, in --model's tokenizer, default the embedded one's)."),
    speculative: str = SpeculativeOpt,
    num_speculative_tokens: int = SpecTokensOpt,
    spec_accept_prob: Optional[float] = SpecAcceptOpt,
    kv_cache_dtype: str = KvCacheDtypeOpt,
    json_out: Optional[Path] = JsonOpt,
) -> None:
    """Batch-1 decode tokens/s and time to first token, greedy, beside the roofline; with --speculative, the
    acceptance rate and mean accepted length of the decode run too."""
    from localllm.bench.measure import measure_latency
    from localllm.bench.models import with_a_tokenizer
    from localllm.bench.speculative import CODE_EDIT_TOKENS, code_edit_prompt

    try:
        _check_backend(backend, quantize, kv_cache_dtype)
        _check_new_tokens(new_tokens)
        if workload not in ("random", "code-edit"):
            raise ValueError(f"unknown --workload {workload!r}; use 'random' or 'code-edit'")
        _check_speculation(backend, speculative, num_speculative_tokens, spec_accept_prob)
        bench_model, device, torch_dtype, limits, quantize = _prepare(model, random_weights, dtype, quantize)
        runtime = _load(backend, bench_model, dtype, device, torch_dtype, max_model_len=max_model_len,
                        quantization=quantize, num_kv_blocks=num_kv_blocks, **_tp_config(backend, tp, allreduce),
                        speculative=speculative, num_speculative_tokens=num_speculative_tokens,
                        speculative_accept_prob=spec_accept_prob, kv_cache_dtype=kv_cache_dtype)
        decode_prompt = None
        if workload == "code-edit":   # with random weights, --model names the tokenizer the prompt is written in
            tokenizer_dir = with_a_tokenizer(bench_model, model if random_weights else None).tokenizer_dir
            decode_prompt = code_edit_prompt(tokenizer_dir, runtime.vocab_size,
                                             min(CODE_EDIT_TOKENS, max_model_len - new_tokens))
        try:
            result = measure_latency(runtime, limits, prompt_tokens, new_tokens, ttft_prompt_tokens,
                                     decode_prompt=decode_prompt, workload=workload)
        finally:
            _closed(runtime)
        _report(result, json_out)
    except (LocalLLMError, ValueError) as e:
        _fail(e)


def _check_throughput_options(backend: str, quantize: str, kv_cache_dtype: str, compare_hf: bool,
                              json_schema: bool) -> None:
    _check_backend(backend, quantize, kv_cache_dtype)
    if compare_hf and backend != "localllm":
        raise ValueError("--compare-hf compares localllm with hf; leave --backend at localllm")
    if json_schema and (backend != "localllm" or compare_hf):
        raise ValueError("--json-schema runs this engine only; leave out --backend hf and --compare-hf")


@bench_app.command(short_help="Output tokens/s of many sequences at once.")
def throughput(
    model: Optional[str] = ModelArg,
    random_weights: Optional[str] = RandomOpt,
    backend: str = BackendOpt,
    compare_hf: bool = typer.Option(False, "--compare-hf", help="Also run transformers' continuous batching on the "
                                                                "same workload and report our ratio to it."),
    dtype: str = DtypeOpt,
    max_model_len: int = MaxLenOpt,
    workload: str = typer.Option("streams", help="'streams' (N equal greedy streams) or 'nano-vllm'."),
    streams: int = typer.Option(16, help="Concurrent sequences of the 'streams' workload."),
    prompt_tokens: int = typer.Option(128, help="Prompt length of each stream."),
    new_tokens: int = typer.Option(256, help="Tokens generated by each stream."),
    max_num_seqs: int = typer.Option(256, help="Most sequences running at once."),
    json_schema: bool = typer.Option(False, "--json-schema", help="Every request under a small JSON schema "
                                                                 "(constrained decoding; localllm only; with "
                                                                 "--random-weights, --model gives the tokenizer, "
                                                                 "default the embedded one)."),
    tp: Optional[int] = TpOpt,
    allreduce: str = AllreduceOpt,
    quantize: str = QuantizeOpt,
    num_kv_blocks: Optional[int] = KvBlocksOpt,
    speculative: str = SpeculativeOpt,
    num_speculative_tokens: int = SpecTokensOpt,
    spec_accept_prob: Optional[float] = SpecAcceptOpt,
    kv_cache_dtype: str = KvCacheDtypeOpt,
    json_out: Optional[Path] = JsonOpt,
) -> None:
    """Aggregate output tokens/s of many sequences generated at once (continuous batching), beside the roofline."""
    from localllm.bench.measure import compare_with_hf, measure_throughput
    from localllm.bench.models import with_a_tokenizer
    from localllm.bench.workloads import guided, throughput_workload

    try:
        _check_throughput_options(backend, quantize, kv_cache_dtype, compare_hf, json_schema)
        _check_speculation(backend, speculative, num_speculative_tokens, spec_accept_prob)
        bench_model, device, torch_dtype, limits, quantize = _prepare(model, random_weights, dtype, quantize)
        work = throughput_workload(workload, bench_model.hf_config.vocab_size, streams, prompt_tokens, new_tokens)
        if json_schema:
            # with random weights, --model names the tokenizer the grammar is matched against
            work, bench_model = guided(work), with_a_tokenizer(bench_model, model if random_weights else None)
        config = dict(max_num_seqs=max_num_seqs, max_model_len=max_model_len, num_kv_blocks=num_kv_blocks,
                      speculative=speculative, num_speculative_tokens=num_speculative_tokens,
                      speculative_accept_prob=spec_accept_prob, kv_cache_dtype=kv_cache_dtype)
        config.update(_tp_config(backend, tp, allreduce))
        runtime = _load(backend, bench_model, dtype, device, torch_dtype, quantization=quantize, **config)
        try:
            result = measure_throughput(runtime, limits, work)
        finally:
            _closed(runtime)
        if compare_hf:
            del runtime
            _free_device_memory(device)
            hf_runtime = _load("hf", bench_model, dtype, device, torch_dtype, **config)
            result = compare_with_hf(result, measure_throughput(hf_runtime, limits, work))
        _report(result, json_out)
    except (LocalLLMError, ValueError) as e:
        _fail(e)


def _tp_config(backend: str, tp: int | None, allreduce: str) -> dict:
    if backend == "hf":
        if tp not in (None, 1):
            raise ValueError("--tp applies to --backend localllm only")
        return {}
    return {"tensor_parallel_size": tp, "tp_allreduce": allreduce}


def _batch_sizes(text: str, option: str = "--batch-sizes") -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"{option} must be positive, got {text!r}")
    return sizes


@bench_app.command(short_help="Decode speed against batch size.")
def sweep(
    model: Optional[str] = ModelArg,
    random_weights: Optional[str] = RandomOpt,
    dtype: str = DtypeOpt,
    max_model_len: int = MaxLenOpt,
    batch_sizes: str = typer.Option(DEFAULT_SWEEP, help="Comma-separated batch sizes."),
    prompt_tokens: int = typer.Option(128, help="Prompt length of each sequence."),
    new_tokens: int = typer.Option(64, help="Tokens generated by each sequence (at least 2)."),
    tp: Optional[int] = TpOpt,
    allreduce: str = AllreduceOpt,
    quantize: str = QuantizeOpt,
    kv_cache_dtype: str = KvCacheDtypeOpt,
    json_out: Optional[Path] = JsonOpt,
) -> None:
    """Decode tokens/s of this engine against batch size (greedy, decode phase only), beside the roofline."""
    from localllm.bench.measure import as_dict, measure_sweep
    from localllm.bench.roofline import percent

    try:
        sizes = _batch_sizes(batch_sizes)
        _check_new_tokens(new_tokens)
        _check_backend("localllm", quantize, kv_cache_dtype)
        bench_model, device, torch_dtype, limits, quantize = _prepare(model, random_weights, dtype, quantize)
        engine = _load("localllm", bench_model, dtype, device, torch_dtype, max_model_len=max_model_len,
                       max_num_seqs=max(sizes), quantization=quantize, kv_cache_dtype=kv_cache_dtype,
                       **_tp_config("localllm", tp, allreduce))
        try:
            result = measure_sweep(engine, limits, sizes, prompt_tokens, new_tokens)
        finally:
            _closed(engine)
    except (LocalLLMError, ValueError) as e:
        _fail(e)
    from rich.table import Table

    table = Table(title=f"{result.model} on {result.device}, {result.dtype}, copy bandwidth "
                        f"{result.copy_bandwidth_gb_s:,.1f} GB/s")
    for column in ("batch size", "decode tok/s", "roofline tok/s", "% of roofline"):
        table.add_column(column, justify="right")
    for point in result.points:
        table.add_row(str(point.batch_size), _cell(point.decode_tokens_per_s), _cell(point.roofline_tokens_per_s),
                      f"{percent(point.decode_tokens_per_s, point.roofline_tokens_per_s):.1f}")
    _print(table)
    _write_json(as_dict(result), json_out)


@bench_app.command(short_help="Per-step cost of grammar masks.")
def grammar(
    model: Optional[str] = ModelArg,
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the masks are applied."),
    sequences: str = typer.Option("16,256", help="Comma-separated counts of constrained sequences."),
    steps: int = typer.Option(200, min=8, help="Decoding steps timed per count (the first quarter warms up)."),
    json_out: Optional[Path] = JsonOpt,
) -> None:
    """Per-step cost of the grammar masks for N sequences under a small JSON schema (the model's tokenizer only;
    no weights are loaded)."""
    from localllm.bench.grammar import measure_grammar_cost
    from localllm.bench.measure import as_dict
    from localllm.config import Config
    from localllm.engine.core import resolve_device
    from localllm.loader.hf_dir import open_model

    try:
        counts = _batch_sizes(sequences, "--sequences")
        files = open_model(model)
        torch_device = resolve_device(Config(device=device))
        results = [measure_grammar_cost(model or "smollm2:135m", files.model_dir, files.hf_config.vocab_size,
                                        files.eos_token_ids, torch_device, count, steps) for count in counts]
    except (LocalLLMError, ValueError, RuntimeError) as e:
        _fail(e)
    first = results[0]
    from rich.table import Table

    table = Table(title=f"grammar masks, {first.model} tokenizer ({first.vocab_size:,} tokens) on {first.device}; "
                        f"tokenizer load {first.tokenizer_load_ms:,.0f} ms, schema compile {first.compile_ms:,.1f} ms")
    for column in ("sequences", "mask ms/step", "mask p90 ms", "us/seq", "upload ms/step", "apply ms/step",
                   "advance ms/step", "host ms/step"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(str(r.sequences), _cell(r.mask_ms), _cell(r.mask_p90_ms), _cell(r.mask_per_sequence_us),
                      _cell(r.upload_ms), _cell(r.apply_ms), _cell(r.advance_ms), _cell(r.host_ms))
    _print(table)
    _write_json({"results": [as_dict(r) for r in results]}, json_out)
