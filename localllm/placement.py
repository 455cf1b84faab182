"""Where a loaded model runs and what its weights take, as `localllm ps`, the chat app's status line and its model
picker show it, from its /api/status entry."""
from __future__ import annotations

from localllm.units import format_size

_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def processor_label(model: dict) -> str:
    """CPU, or the GPUs the model spans (GPU 0, GPU 0,1); '-' while it has no device yet."""
    device = model.get("device")
    if not device:
        return "-"
    if device == "cpu":
        return "CPU"
    gpus = [g["device"].removeprefix("cuda:") for g in model.get("gpus") or []]
    return f"GPU {','.join(gpus)}" if gpus else device.replace("cuda:", "GPU ").replace("cuda", "GPU")


def weights_label(model: dict) -> str:
    """'Q4_K_M 4.6 GiB': the weights' quantization (their dtype when they run dense) and the memory they take."""
    kind = model.get("quantization") or _DTYPES.get(model.get("dtype"), model.get("dtype") or "?")
    return f"{kind} {format_size(model['param_bytes'])}" if "param_bytes" in model else kind
