"""A tensor-parallel worker: one process per rank beyond the first, started by the engine core (rank 0).

It loads its shard, sets up in lockstep with the other ranks (rank_setup.py), then runs the forward of every
step rank 0 broadcasts until told to stop. It samples nothing: its slice of the logits goes to rank 0. It exits
when rank 0 does (parent-death signal, and every collective fails once a peer is gone).

    python -m localllm.engine.tp_worker   (a WorkerSpec as JSON on stdin)
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

import msgspec

from localllm.process_exit import exit_now

PR_SET_PDEATHSIG = 1


class WorkerSpec(msgspec.Struct, frozen=True):
    rank: int
    world_size: int
    port: int                 # rank 0's TCP store, on 127.0.0.1
    parent_pid: int
    device: str               # this rank's device, e.g. cuda:1
    dtype: str
    num_threads: int
    model_dir: str | None     # None = random weights
    hf_config: dict           # the model's config, as transformers' to_dict gives it
    config: dict              # the engine Config's fields
    status_fd: int            # where a load failure is written, one line of JSON, for rank 0 to report
    step_fd: int              # the read end of the pipe rank 0 writes each step to (step_channel.py)


class WorkerFailed(msgspec.Struct, frozen=True):
    rank: int
    message: str


def _die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):   # not Linux: the failing collectives still end this process
        pass
    if os.getppid() != parent_pid:      # the parent died before the signal was armed
        raise SystemExit(1)


def main() -> None:
    spec = msgspec.json.decode(sys.stdin.buffer.read(), type=WorkerSpec)
    _die_with_parent(spec.parent_pid)
    import torch

    torch.set_num_threads(spec.num_threads)
    try:
        runner, channel, device = _set_up(spec, torch)
    except Exception as e:  # noqa: BLE001 - report it to rank 0 in one line, then exit
        from localllm.errors import one_line

        message = f"rank {spec.rank} ({spec.device}): {one_line(e)}"
        os.write(spec.status_fd, msgspec.json.encode(WorkerFailed(spec.rank, message)) + b"\n")
        raise SystemExit(1) from None
    _serve(runner, channel, device)
    exit_now(0)


def _set_up(spec: WorkerSpec, torch):
    from pathlib import Path

    from localllm.config import Config
    from localllm.engine.rank_setup import set_up_rank
    from localllm.engine.step_channel import StepReceiver
    from localllm.hf_config import HFConfig
    from localllm.layers.parallel import connect_store, init_tensor_parallel

    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_tensor_parallel(spec.rank, spec.world_size, device, connect_store(spec.port, spec.world_size))
    setup = set_up_rank(Config(**spec.config), HFConfig(**spec.hf_config),
                        Path(spec.model_dir) if spec.model_dir else None, device, getattr(torch, spec.dtype))
    return setup.runner, StepReceiver(device, spec.step_fd), device


def _serve(runner, channel, device) -> None:
    from localllm.engine.batch import H, unpack
    from localllm.layers.parallel import destroy_tensor_parallel

    in_flight = None
    while True:
        header, payload = channel.receive()
        if payload is None:
            break
        runner.forward(unpack(header, payload, device, in_flight))
        if int(header[H["mirror_sampled"]]):
            in_flight = channel.receive_tokens(int(header[H["num_sampling"]]))
    runner.release_graphs()
    destroy_tensor_parallel()


if __name__ == "__main__":
    main()
