"""How rank 0 hands each step to the other tensor-parallel ranks, never with pickle.

The step description travels on the host, through one pipe per worker: the fixed-size int64 header (its lengths
say how long the rest is), then the flat int32 payload. A worker therefore learns each step without waiting for
its GPU, copies the payload up asynchronously and queues the forward right behind the one still running, as rank
0 does: a broadcast over NCCL would make every worker read the header back from its GPU, which waits for the step
in flight and leaves its GPU idle while the host catches up. Waiting on a pipe also has no timeout, so an idle
engine's workers wait for hours, and it ends (end of file) when rank 0 goes away.

After the forward, when the step's tokens stay on the device (overlapped steps), rank 0 broadcasts the sampled
token ids over the process group (NCCL on GPUs, gloo on CPU): the next step's inputs may come from them, and they
exist only on rank 0's device.
"""
from __future__ import annotations

import fcntl
import os

import numpy as np
import torch

from localllm.engine.batch import CMD_STOP, HEADER_LEN, H, PackedStep, payload_len, to_device
from localllm.layers.parallel import broadcast_from_first

# A step's payload is a few KiB when decoding and up to ~100 KiB for a full prefill chunk; a pipe this large takes
# it without making rank 0 wait for the worker to read. Linux only (F_SETPIPE_SZ); elsewhere the default applies.
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def open_step_pipe() -> tuple[int, int]:
    """(read end, write end) of a pipe sized for whole steps."""
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:   # above the system's pipe-max-size: a step then takes several writes
        pass
    return read_fd, write_fd


class StepSender:
    """Rank 0's end: the write ends of the workers' pipes."""

    def __init__(self, device: torch.device, write_fds: list[int]):
        self.device = device
        self.write_fds = write_fds

    def send(self, packed: PackedStep) -> None:
        self._write(packed.header.numpy().tobytes() + packed.payload.numpy().tobytes())

    def send_stop(self) -> None:
        header = np.zeros(HEADER_LEN, dtype=np.int64)
        header[H["command"]] = CMD_STOP
        self._write(header.tobytes())

    def send_tokens(self, token_ids: torch.Tensor) -> None:
        broadcast_from_first(token_ids)

    def _write(self, data: bytes) -> None:
        """Raises BrokenPipeError when a worker is gone."""
        for fd in self.write_fds:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]

    def close(self) -> None:
        for fd in self.write_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.write_fds = []


class StepReceiver:
    """A worker's end: the read end of its pipe."""

    def __init__(self, device: torch.device, read_fd: int):
        self.device = device
        self.read_fd = read_fd
        # NCCL moves device tensors only; gloo moves host tensors
        self.wire_device = device if device.type == "cuda" else torch.device("cpu")

    def receive(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(header on the host, payload on this rank's device); payload None for the stop command, or when rank 0
        has gone away."""
        raw = self._read(HEADER_LEN * 8)
        if raw is None:
            return torch.zeros(HEADER_LEN, dtype=torch.int64), None
        header = torch.from_numpy(np.frombuffer(raw, dtype=np.int64))   # views the fresh buffer, no copy
        if int(header[H["command"]]) == CMD_STOP:
            return header, None
        raw = self._read(payload_len(header) * 4)
        if raw is None:
            return header, None
        payload = torch.from_numpy(np.frombuffer(raw, dtype=np.int32))
        return header, to_device(payload, self.device)

    def receive_tokens(self, count: int) -> torch.Tensor:
        return broadcast_from_first(torch.empty(count, dtype=torch.int64, device=self.wire_device))

    def _read(self, size: int) -> bytearray | None:
        """Exactly `size` bytes, or None at end of file."""
        data = bytearray()
        while len(data) < size:
            chunk = os.read(self.read_fd, size - len(data))
            if not chunk:
                return None
            data += chunk
        return data
