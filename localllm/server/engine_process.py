"""The engine process: loads one model into an EngineCore and serves it over two pipes. Token ids in,
TokenEvent and EmbeddingEvent batches (with the core's counters) out. Runs the model only; all text stays in the
front end."""
from __future__ import annotations

import gc
import os
import sys
import time
from multiprocessing.connection import Connection

from localllm.cpu_cores import available_cores
from localllm.errors import one_line
from localllm.process_exit import exit_now
from localllm.server.protocol import (PROTOCOL_VERSION, AbortRequests, AddRequest, DecodeError, EmbedRequest,
                                      EngineFailed, EngineStats, FinishSequence, LoadFailed, Loaded, MessageRefused,
                                      ModelResolved, ProtocolError, RankMemory, Receiver, RequestFailed, Sender,
                                      Shutdown, Start, StepOutput, ToEngine, check_version)

IDLE_CHECK_S = 1.0      # how often an idle engine checks that its daemon is still alive
STATS_EVERY_S = 0.25    # steps that yield no token (prefill chunks) still report counters this often


def default_num_threads() -> int:
    """All the cores this process may use (its CPU affinity and CPU quota: localllm.cpu_cores), less one for the
    front end on machines with more than four."""
    cores = available_cores()
    return cores if cores <= 4 else cores - 1


def openmp_environment(num_threads: int) -> dict[str, str]:
    """What OpenMP reads once, when torch loads it: a pool of num_threads, whose idle threads sleep at once. It
    must be in the engine process's environment from its start (see engine_spawn._start_with_environment).

    By default a thread that has finished its share of an op spins until the others are done. When another process
    (a second engine, anything busy) holds one of the cores, the spinning thread burns its time slice while the one
    it waits for is not running, at each of a decode step's ~1,500 ops: batch-1 decode fell from ~28 to 2-3 tok/s
    on two cores (docs/benchmarks.md).
    """
    return {"OMP_NUM_THREADS": str(num_threads), "OMP_WAIT_POLICY": "PASSIVE"}


def main(inbox_connection: Connection, outbox_connection: Connection) -> None:
    """Entry point of the spawned process: waits for Start, loads, then serves."""
    # Importing torch and building the model allocate millions of objects that live as long as the process: the
    # cyclic collector would walk them again and again (~8% of the import); it runs again once they are frozen.
    gc.disable()
    inbox, outbox = Receiver(inbox_connection, ToEngine), Sender(outbox_connection)
    try:
        start = _handshake(inbox)
    except (DecodeError, ProtocolError) as e:
        outbox.send(LoadFailed("ProtocolError", one_line(e)))
        return
    except EOFError:
        return  # the daemon is gone
    import torch

    torch.set_num_threads(start.config.num_threads or default_num_threads())
    core = _load(start.config, outbox)
    if core is None:
        return
    gc.freeze()   # what the load made stays out of every later collection
    gc.enable()
    code = 0
    try:
        _serve(core, inbox, outbox)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone
    except Exception as e:  # noqa: BLE001 - report anything, then exit; the daemon decides what to do
        try:
            outbox.send(EngineFailed(f"{type(e).__name__}: {one_line(e)}"))
        except OSError:
            pass
        code = 1
    finally:
        core.shutdown()   # its tensor-parallel workers, if any
    exit_now(code)


def _exit_on_worker_failure(message: str) -> None:
    """A tensor-parallel worker died (the watchdog has stopped the others): the engine cannot go on, and its
    main thread may be stuck in a collective, so the process ends here; the front end then answers 503 and
    loads the model again on the next request."""
    print(f"localllm engine: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def _handshake(inbox: Receiver) -> Start:
    message = inbox.receive()
    if not isinstance(message, Start):
        raise ProtocolError(f"the first message must be Start, got {type(message).__name__}")
    check_version(message.protocol, "the front end")
    return message


def _load(config, outbox: Sender):
    import torch

    from localllm.engine.core import EngineCore, keeps_gguf_blocks, resolve_device
    from localllm.engine.kernel_cache import cached_kernel_count, start_kind, triton_cache_dir
    from localllm.engine.quant_choice import settle_quantization
    from localllm.errors import LocalLLMError
    from localllm.loader.hf_dir import open_model

    started = time.perf_counter()
    # Triton's kernels only run on a GPU: on a CPU, importing it would only add to the start
    kernel_cache = triton_cache_dir() if resolve_device(config).type == "cuda" else None
    kernels_before = cached_kernel_count(kernel_cache)
    try:
        config = settle_quantization(config, config.model)
        files = open_model(config.model, keeps_gguf_blocks(config))
        model_dir, eos = files.model_dir, files.eos_token_ids
        outbox.send(ModelResolved(str(model_dir)))
        core = EngineCore(config, model_dir, files.hf_config, eos, on_worker_failure=_exit_on_worker_failure,
                          pooling=files.pooling)
    except (LocalLLMError, ValueError, OSError) as e:
        outbox.send(LoadFailed(type(e).__name__, one_line(e)))
        return None
    except Exception as e:  # noqa: BLE001
        outbox.send(LoadFailed("EngineError", f"{type(e).__name__}: {one_line(e)}"))
        return None
    kernels = start_kind(kernels_before, cached_kernel_count(kernel_cache))
    tp = core.tensor_parallel_size
    split = f", split over {tp} {'GPUs' if core.device.type == 'cuda' else 'CPU ranks'}" if tp > 1 else ""
    print(f"localllm engine: {config.model or 'the embedded model'} ready in {time.perf_counter() - started:.1f} s"
          + split + (f" ({kernels})" if kernels else ""), file=sys.stderr, flush=True)
    runner = core.runner
    # every rank holds shards of the same shapes, so rank 0's sizes are each GPU's
    weights = runner.weight_bytes
    kv = runner.kv_cache.numel() * runner.kv_cache.element_size()
    gpus = [RankMemory(f"cuda:{rank}", weights, kv) for rank in range(tp)] if core.device.type == "cuda" else []
    outbox.send(Loaded(
        protocol=PROTOCOL_VERSION, model_dir=str(model_dir), device=str(core.device),
        dtype=str(core.dtype).removeprefix("torch."),
        max_model_len=core.max_model_len, vocab_size=core.vocab_size, block_size=config.block_size,
        num_blocks=core.num_blocks, param_bytes=weights * tp, kv_cache_bytes=kv * tp,
        eos_token_ids=sorted(eos), num_threads=torch.get_num_threads(),
        stats=stats_of(core), tensor_parallel_size=tp, worker_pids=core.worker_pids,
        gpus=gpus, pooling=files.pooling, generates=runner.has_lm_head, quantization=runner.quantization,
        speculative=config.speculative))
    return core


def stats_of(core, steps: int = 0) -> EngineStats:
    manager = core.block_manager
    total, free = len(manager.blocks), manager.num_free_blocks
    cached = manager.num_cached_free_blocks
    spec = core.speculator.stats if core.speculator else None
    return EngineStats(draft_tokens=spec.proposed if spec else 0, accepted_tokens=spec.accepted if spec else 0,
                       verify_steps=spec.verify_steps if spec else 0,
                       running=len(core.scheduler.running), waiting=len(core.scheduler.waiting),
                       blocks_total=total, blocks_used=total - free, blocks_cached=cached,
                       blocks_free=free - cached, prefix_queries=manager.stats.queries,
                       prefix_hits=manager.stats.hits, preemptions=core.scheduler.num_preemptions, steps=steps)


def _serve(core, inbox: Receiver, outbox: Sender) -> None:
    parent = os.getppid()
    steps = 0
    last_sent = 0.0
    while True:
        if not core.has_unfinished:
            while not inbox.poll(IDLE_CHECK_S):   # idle: sleep on the pipe
                if os.getppid() != parent:
                    return                        # orphaned: the daemon died without closing the pipe
        changed = False
        while inbox.poll():
            try:
                message = inbox.receive()
            except DecodeError as e:   # not a message of this protocol (a pickle, say): refuse it, go on
                outbox.send(MessageRefused(one_line(e)))
                continue
            if isinstance(message, Shutdown):
                return
            _handle(core, message, outbox)
            changed = True
        events = []
        if core.has_unfinished:
            events = core.step()
            steps += 1
        embeddings = core.take_embeddings()
        now = time.monotonic()
        if events or embeddings or changed or now - last_sent > STATS_EVERY_S:
            outbox.send(StepOutput(events, stats_of(core, steps), embeddings))
            last_sent = now


def _handle(core, message, outbox: Sender) -> None:
    if isinstance(message, (AddRequest, EmbedRequest)):
        try:
            core.add_request(message.request_id, message.prompt_token_ids, message.params)
        except Exception as e:  # noqa: BLE001 - a refused request never takes the engine down
            outbox.send(RequestFailed(message.request_id, type(e).__name__, one_line(e)))
    elif isinstance(message, AbortRequests):
        for request_id in message.request_ids:
            core.abort_request(request_id)
    elif isinstance(message, FinishSequence):
        core.finish_sequence(message.request_id, message.index, message.reason)
    else:   # a second Start: the model is loaded once
        outbox.send(MessageRefused(f"unexpected {type(message).__name__} after the start"))
