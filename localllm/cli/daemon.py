"""`localllm serve` (the daemon, in the foreground) and `localllm stop` (stop the background daemon)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand

from localllm import settings as env
from localllm.errors import LocalLLMError, one_line
from localllm.server.settings import DEFAULT_MAX_BODY_BYTES


class ServeCommand(TyperCommand):
    """`localllm serve --help` ends with the environment variables, as `ollama serve --help` does: plain lines
    after the options (an epilog would be re-wrapped by rich)."""

    def format_help(self, ctx, formatter) -> None:
        super().format_help(ctx, formatter)
        formatter.write("\n" + env.help_table() + "\n")

SpeculativeOpt = typer.Option(None, "--speculative", help="Speculative decoding: off, ngram (draft tokens looked up "
                                                          "in the prompt and output) or draft:MODEL (proposed by a "
                                                          "small model with the same tokenizer); verified in one "
                                                          "forward.")
SpecTokensOpt = typer.Option(None, "--num-speculative-tokens", min=1,
                             help="Most draft tokens a sequence verifies per step (default 4).")
KV_CACHE_DTYPE_HELP = ("KV cache element type: auto (the model's dtype) or fp8 (e4m3: half the bytes, twice the "
                       "blocks; CUDA GPUs of compute capability 8.9+).")
KvCacheDtypeOpt = typer.Option(None, "--kv-cache-dtype", show_default=False, help=KV_CACHE_DTYPE_HELP)


def _fail(error: Exception) -> None:
    typer.echo(f"Error: {one_line(error)}", err=True)
    raise typer.Exit(1)


def serve(
    host: Optional[str] = typer.Option(None, "--host", show_default=False, help="Address to bind (default: from "
                                       "$LOCALLLM_HOST); a non-loopback one needs an API key."),
    port: Optional[int] = typer.Option(None, "--port", show_default=False, help="Port to listen on (default: from "
                                       "$LOCALLLM_HOST); 0 = any free port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY' (all "
                                          "routes but /health); prefer $LOCALLLM_API_KEY, which ps does not show."),
    allow_host: List[str] = typer.Option([], "--allow-host", help="Also accept this Host header ('*' = any)."),
    cors_origin: List[str] = typer.Option([], "--cors-origin", help="Allow this browser origin ('*' = any; "
                                          "default: $LOCALLLM_ORIGINS)."),
    keep_alive: Optional[float] = typer.Option(None, "--keep-alive", show_default=False, help="Seconds an idle "
                                               "model stays loaded; < 0 = forever (default: $LOCALLLM_KEEP_ALIVE)."),
    max_queued: Optional[int] = typer.Option(None, "--max-queued", show_default=False, help="Requests that may "
                                             "wait beyond those running (default: $LOCALLLM_MAX_QUEUED)."),
    max_body_bytes: int = typer.Option(DEFAULT_MAX_BODY_BYTES, "--max-body-bytes",
                                       help="Refuse larger request bodies (413)."),
    model: List[str] = typer.Option([], "--model", help="Allow and preload this model (alias, directory, .gguf)."),
    engine: List[str] = typer.Option([], "--engine", metavar="KEY=VALUE",
                                     help="Engine setting, e.g. num_kv_blocks=512."),
    state_file: Optional[Path] = typer.Option(None, "--state-file", hidden=True,
                                              help="Where to record the address (default: the data directory)."),
    log_file: Optional[Path] = typer.Option(None, "--log-file", hidden=True,
                                            help="Log there, rotated, with stdout and stderr (default: stderr)."),
    tp: Optional[int] = typer.Option(None, "--tp", min=1, help="Split each model over N GPUs (tensor parallelism); "
                                                              "default: the fewest GPUs that fit it, 1 on CPU."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="How weights are stored: auto (quantized "
                                           "checkpoints stay quantized on GPUs), none (dequantize), native, or a "
                                           "format to quantize to at load (q4_k_m, q8_0, int4, fp8, ...)."),
    gpu_memory_fraction: Optional[float] = typer.Option(
        None, "--gpu-memory-fraction", min=0.01, max=1.0, show_default=False,
        help="Let each model fill this share of a GPU's memory, its KV pool as large as fits, as a server would "
             "(default: $LOCALLLM_GPU_MEMORY_FRACTION; unset = a KV pool sized to the model's sequences and context)."),
    speculative: Optional[str] = SpeculativeOpt,
    num_speculative_tokens: Optional[int] = SpecTokensOpt,
    kv_cache_dtype: Optional[str] = KvCacheDtypeOpt,
) -> None:
    """Run the daemon in the foreground: an OpenAI-compatible API on http://HOST:PORT/v1."""
    from localllm.server.daemon import serve as run_daemon
    from localllm.server.settings import ServerSettings, parse_engine_overrides

    try:
        settings = ServerSettings.from_environment(
            host=host, port=port, api_key=api_key, cors_origins=cors_origin, keep_alive_s=keep_alive,
            max_queued=max_queued, max_body_bytes=max_body_bytes, allowed_hosts=allow_host, models=model,
            engine=parse_engine_overrides(engine + tp_override(tp) + quantize_override(quantize)
                                          + kv_cache_override(kv_cache_dtype) + memory_override(gpu_memory_fraction)
                                          + speculative_override(speculative, num_speculative_tokens)),
            state_file=state_file.expanduser() if state_file else None)
        run_daemon(settings, log_file.expanduser() if log_file else None)
    except (LocalLLMError, ValueError) as e:
        _fail(e)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def tp_override(tp: int | None) -> list[str]:
    """--tp N as the engine setting it stands for."""
    return [] if tp is None else [f"tensor_parallel_size={tp}"]


def quantize_override(quantize: str | None) -> list[str]:
    """--quantize X as the engine setting it stands for."""
    return [] if quantize is None else [f"quantization={quantize}"]


def kv_cache_override(kv_cache_dtype: str | None) -> list[str]:
    """--kv-cache-dtype X as the engine setting it stands for."""
    return [] if kv_cache_dtype is None else [f"kv_cache_dtype={kv_cache_dtype}"]


def memory_override(fraction: float | None) -> list[str]:
    """--gpu-memory-fraction F, else $LOCALLLM_GPU_MEMORY_FRACTION, as the engine setting it stands for."""
    fraction = fraction if fraction is not None else env.gpu_memory_fraction()
    return [] if fraction is None else [f"gpu_memory_fraction={fraction}"]


def speculative_override(speculative: str | None, num_tokens: int | None) -> list[str]:
    """--speculative and --num-speculative-tokens as the engine settings they stand for."""
    return ([] if speculative is None else [f"speculative={speculative}"]) \
        + ([] if num_tokens is None else [f"num_speculative_tokens={num_tokens}"])


def stop(model: Optional[str] = typer.Argument(None, help="Unload only this model; the daemon keeps running.")) -> None:
    """Stop the background daemon (its models are unloaded), or unload only MODEL."""
    from localllm.client import Client, find_daemon, stop_daemon

    if model is not None:
        state = find_daemon()
        if state is None:
            typer.echo("no daemon is running")
            return
        try:
            with Client(state.url, timeout=30.0) as client:
                unloaded = client.unload(model)["state"]
        except LocalLLMError as e:
            _fail(e)
        typer.echo(f"unloaded {model}" if unloaded == "unloaded" else f"{model} unloads when its last request ends")
        return
    try:
        stopped = stop_daemon()
    except (LocalLLMError, OSError) as e:
        _fail(e)
    typer.echo(f"stopped the daemon at {stopped.url} (pid {stopped.pid})" if stopped else "no daemon is running")
