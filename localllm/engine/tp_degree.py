"""How many GPUs a model is split over: checks of a degree asked for, and the default pick (the smallest degree
that divides the head counts and leaves every GPU room for its weight shard plus a useful KV pool)."""
from __future__ import annotations

from dataclasses import dataclass

from localllm.errors import LocalLLMError
from localllm.hf_config import attention_head_dim

GiB = 1 << 30
# "A useful KV pool": room for this many full-length contexts beside the weights.
USEFUL_CONTEXTS = 2
# A refused degree's message lists the degrees up to this that would work (more GPUs than this are rarely local).
LISTED_DEGREES = 8


class TensorParallelError(LocalLLMError):
    pass


@dataclass(frozen=True)
class ModelSize:
    """What sizing a degree needs to know of a model."""
    num_heads: int
    num_kv_heads: int
    weight_bytes: int              # all the weights, unsharded
    kv_bytes_per_token: int        # K and V of every layer and KV head, one token
    context_len: int


def degree_error(num_heads: int, num_kv_heads: int, tp: int) -> str | None:
    """Why `tp` cannot split these heads, or None when it can (KV heads may be replicated when fewer than tp)."""
    if tp < 1:
        return f"tensor_parallel_size must be at least 1, got {tp}"
    if num_heads % tp:
        return f"tensor_parallel_size {tp} does not divide the model's {num_heads} attention heads"
    if num_kv_heads >= tp and num_kv_heads % tp:
        return f"tensor_parallel_size {tp} does not divide the model's {num_kv_heads} key/value heads"
    if num_kv_heads < tp and tp % num_kv_heads:
        return f"tensor_parallel_size {tp} is not a multiple of the model's {num_kv_heads} key/value heads"
    return None


def splitting_degrees(num_heads: int, num_kv_heads: int, most: int) -> list[int]:
    """The degrees from 1 to `most` that split these heads (degree_error finds nothing)."""
    return [tp for tp in range(1, most + 1) if degree_error(num_heads, num_kv_heads, tp) is None]


def refusal(num_heads: int, num_kv_heads: int, tp: int) -> str | None:
    """degree_error's reason, followed by the degrees up to LISTED_DEGREES that do split these heads."""
    reason = degree_error(num_heads, num_kv_heads, tp)
    if reason is None or tp < 1:
        return reason
    fitting = splitting_degrees(num_heads, num_kv_heads, LISTED_DEGREES)
    return f"{reason} (it can be split over {', '.join(map(str, fitting))} GPUs)"


def shard_bytes(size: ModelSize, tp: int) -> int:
    """Memory one rank needs: its weight shard plus USEFUL_CONTEXTS full contexts of its KV heads."""
    kv_heads_per_rank = max(1, size.num_kv_heads // tp)
    kv_per_token = size.kv_bytes_per_token * kv_heads_per_rank // size.num_kv_heads
    return size.weight_bytes // tp + USEFUL_CONTEXTS * size.context_len * kv_per_token


def check_degree(size: ModelSize, tp: int, free_bytes: list[int]) -> None:
    """Raises a one-line TensorParallelError when `tp` cannot run on GPUs with these free bytes (one per GPU)."""
    reason = refusal(size.num_heads, size.num_kv_heads, tp)
    if reason:
        raise TensorParallelError(reason)
    if tp > len(free_bytes):
        raise TensorParallelError(f"tensor_parallel_size {tp} needs {tp} GPUs, but {len(free_bytes)} "
                                  f"{'is' if len(free_bytes) == 1 else 'are'} visible")
    need = shard_bytes(size, tp)
    for index, free in enumerate(free_bytes[:tp]):
        if free < need:
            raise TensorParallelError(
                f"not enough free memory on GPU {index}: {free / GiB:.1f} GiB free, but a 1/{tp} shard needs "
                f"{need / GiB:.1f} GiB (weights plus {USEFUL_CONTEXTS} full contexts of KV cache)")


def pick_degree(size: ModelSize, free_bytes: list[int]) -> int:
    """The smallest degree that divides the heads and fits every GPU it uses; 1 without GPUs."""
    if not free_bytes:
        return 1
    candidates = splitting_degrees(size.num_heads, size.num_kv_heads, len(free_bytes))
    for tp in candidates:
        if all(free >= shard_bytes(size, tp) for free in free_bytes[:tp]):
            return tp
    largest = candidates[-1]
    check_degree(size, largest, free_bytes)   # raises, naming the GPU that is short
    return largest


def model_size(hf_config, dtype, context_len: int, model_dir=None, quantization: str = "none",
               kv_dtype=None) -> ModelSize:
    """The model's size on GPUs in `dtype`, its weights stored as `quantization` says and its KV cache in kv_dtype
    (None: dtype), counted on the meta device (nothing is allocated)."""
    import torch

    from localllm.engine.model_builder import build_model, weight_bytes

    model, _ = build_model(hf_config, model_dir, quantization, torch.device("meta"), dtype, device_type="cuda")
    weights = weight_bytes(model)
    kv_per_token = (2 * hf_config.num_hidden_layers * hf_config.num_key_value_heads * attention_head_dim(hf_config)
                    * (kv_dtype or dtype).itemsize)
    return ModelSize(hf_config.num_attention_heads, hf_config.num_key_value_heads, weights, kv_per_token,
                     context_len)


def free_gpu_bytes() -> list[int]:
    """Free memory of each visible GPU, read through NVML so that no CUDA context is made on GPUs this process
    will not use (torch's memory query as the fallback)."""
    import torch

    count = torch.cuda.device_count()
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            # torch maps its device indices to NVML's, honouring CUDA_VISIBLE_DEVICES
            handles = [pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(i)) for i in range(count)]
            return [int(pynvml.nvmlDeviceGetMemoryInfo(h).free) for h in handles]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML, or a torch without that mapping: ask torch itself
        return [torch.cuda.mem_get_info(i)[0] for i in range(count)]
