"""How rank 0 hands each step to the other tensor-parallel ranks: broadcasts of integer tensors over the
process group (gloo on CPU, NCCL on GPUs), never pickle. Per step: the fixed-size int64 header (its lengths
say how long the rest is), then the flat int32 payload, and after the forward, when the step's tokens stay
on the device (overlapped steps), the sampled token ids, which the next step's inputs may come from."""
from __future__ import annotations

import torch

from localllm.engine.batch import CMD_STOP, HEADER_LEN, H, PackedStep, payload_len, to_device
from localllm.layers.parallel import broadcast_from_first


class StepChannel:
    def __init__(self, device: torch.device):
        self.device = device
        # NCCL moves device tensors only; gloo moves host tensors
        self.wire_device = device if device.type == "cuda" else torch.device("cpu")

    # --- rank 0 ---------------------------------------------------------------------------------------
    def send(self, packed: PackedStep, payload: torch.Tensor) -> None:
        """payload: packed.payload already on this rank's device (what rank 0 runs itself)."""
        broadcast_from_first(to_device(packed.header, self.wire_device))   # pinned: no wait for the GPU
        broadcast_from_first(payload)

    def send_stop(self) -> None:
        header = torch.zeros(HEADER_LEN, dtype=torch.int64)
        header[H["command"]] = CMD_STOP
        broadcast_from_first(to_device(header, self.wire_device))

    def send_tokens(self, token_ids: torch.Tensor) -> None:
        broadcast_from_first(token_ids)

    # --- other ranks ----------------------------------------------------------------------------------
    def receive(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(header on the host, payload on this rank's device); payload None for the stop command."""
        header = broadcast_from_first(torch.empty(HEADER_LEN, dtype=torch.int64, device=self.wire_device)).cpu()
        if int(header[H["command"]]) == CMD_STOP:
            return header, None
        payload = torch.empty(payload_len(header), dtype=torch.int32, device=self.wire_device)
        return header, broadcast_from_first(payload)

    def receive_tokens(self, count: int) -> torch.Tensor:
        return broadcast_from_first(torch.empty(count, dtype=torch.int64, device=self.wire_device))
