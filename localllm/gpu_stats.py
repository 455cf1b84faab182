"""Per-GPU memory and utilization through NVML (nvidia-ml-py), for `localllm ps`, /api/status and /metrics.
Never imports torch, so the front end and the CLI can use it."""
from __future__ import annotations


def gpu_stats() -> list[dict]:
    """Per-GPU memory and utilization through NVML; [] without nvidia-ml-py, a driver or a GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({"index": index, "name": name.decode() if isinstance(name, bytes) else name,
                         "memory_used_bytes": int(memory.used), "memory_total_bytes": int(memory.total),
                         "utilization_percent": int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)})
        return gpus
    except pynvml.NVMLError:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
