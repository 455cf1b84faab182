"""Where a loaded model runs, as `localllm ps` and the chat app's status line show it, from its /api/status entry."""
from __future__ import annotations


def processor_label(model: dict) -> str:
    """CPU, or the GPUs the model spans (GPU 0, GPU 0,1); '-' while it has no device yet."""
    device = model.get("device")
    if not device:
        return "-"
    if device == "cpu":
        return "CPU"
    gpus = [g["device"].removeprefix("cuda:") for g in model.get("gpus") or []]
    return f"GPU {','.join(gpus)}" if gpus else device.replace("cuda:", "GPU ").replace("cuda", "GPU")
