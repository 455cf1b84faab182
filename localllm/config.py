"""The one engine configuration object, frozen once made: the engine process receives it whole at start."""
from __future__ import annotations

from dataclasses import dataclass

from localllm.quantization import check_quantization

TP_ALLREDUCE_KINDS = ("nccl", "symm_mem", "fused")
SPECULATIVE_KINDS = ("off", "ngram")
KV_CACHE_DTYPES = ("auto", "fp8")
DRAFT_PREFIX = "draft:"   # speculative="draft:MODEL": a small model with the target's vocabulary proposes the drafts
MAX_SPECULATIVE_TOKENS = 16


@dataclass(frozen=True)
class Config:
    model: str | None = None          # alias, local HF directory or .gguf file; None = the embedded default
    dtype: str = "auto"               # "auto" = float32 on CPU, bfloat16 on GPU
    quantization: str = "auto"        # how weights are stored: auto, none, native, fast or a format (localllm.quantization)
    device: str = "auto"              # "auto" = cuda when available, else cpu
    block_size: int = 16              # tokens per KV-cache block
    num_kv_blocks: int | None = None  # fixed pool size; None = sized from kv_memory_fraction / kv_memory_gib
    kv_cache_dtype: str = "auto"      # "auto" = the model's dtype (float16 for the CPU kernels); "fp8" = e4m3,
    #                                   one byte an element, scale 1 (CUDA GPUs of compute capability 8.9+)
    kv_memory_gib: float = 1.0        # CPU: memory given to the KV pool when num_kv_blocks is None
    gpu_memory_fraction: float | None = None  # GPU: None = a desktop KV pool, what max_num_seqs x max_model_len
    #                                           can use (1 GiB .. a quarter of the card; engine/kv_pool.py); a
    #                                           share of device memory = server style, the pool fills it
    max_num_batched_tokens: int = 2048  # token budget of one scheduler step
    max_num_seqs: int = 64            # running sequences at most
    max_model_len: int | None = None  # None = the model's own context length
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    num_threads: int | None = None    # CPU intra-op threads; None = torch's default
    enforce_eager: bool = False       # GPU: no CUDA graphs (debugging)
    overlap_steps: bool | None = None  # schedule the next step while the GPU runs this one; None = on GPU only
    tensor_parallel_size: int | None = None  # ranks the model is split over; None = 1 on CPU, on GPUs the fewest
    #                                          that fit the weights and a useful KV pool
    tp_allreduce: str = "nccl"        # all-reduce of the ranks: nccl (gloo on CPU), symm_mem (up to 10 MiB, GPUs)
    #                                   or fused (one-token steps' inside the GEMV and the norm after it, GPUs)
    speculative: str = "off"          # speculative decoding: off, ngram (drafts looked up in the prompt and output) or
    #                                   draft:MODEL (a small model with the same vocabulary proposes them, greedily)
    num_speculative_tokens: int = 4   # most drafts one sequence verifies per step
    speculative_batch_limit: int = 32  # with more running sequences than this, nobody speculates (compute-bound)
    # benchmarks on random weights only: each draft is accepted with this probability instead of by the model
    # (the output is then not the model's)
    speculative_accept_prob: float | None = None
    # verifying steps laid out with 1 + num_speculative_tokens rows per sequence (padded), the shape the verify CUDA
    # graphs replay; None = where those graphs exist (GPU without enforce_eager). True on a CPU tests that layout.
    uniform_verify_steps: bool | None = None

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks <= 0:
            raise ValueError(f"num_kv_blocks must be positive, got {self.num_kv_blocks}")
        if self.max_num_batched_tokens <= 0:
            raise ValueError(f"max_num_batched_tokens must be positive, got {self.max_num_batched_tokens}")
        if self.max_num_seqs <= 0:
            raise ValueError(f"max_num_seqs must be positive, got {self.max_num_seqs}")
        if self.gpu_memory_fraction is not None and not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        if self.tensor_parallel_size is not None and self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be at least 1, got {self.tensor_parallel_size}")
        if self.tp_allreduce not in TP_ALLREDUCE_KINDS:
            raise ValueError(f"tp_allreduce must be one of {', '.join(TP_ALLREDUCE_KINDS)}, got {self.tp_allreduce!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        check_speculation(self)
        check_quantization(self.quantization)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")


def check_speculation(config: Config) -> None:
    if config.speculative.startswith(DRAFT_PREFIX):
        if not draft_model(config):
            raise ValueError("speculative=draft:MODEL needs a model after 'draft:'")
        if (config.tensor_parallel_size or 1) > 1:
            raise ValueError("speculative decoding with a draft model needs tensor_parallel_size 1, "
                             f"got {config.tensor_parallel_size}")
    elif config.speculative not in SPECULATIVE_KINDS:
        raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE_KINDS)} or draft:MODEL, "
                         f"got {config.speculative!r}")
    if not 1 <= config.num_speculative_tokens <= MAX_SPECULATIVE_TOKENS:
        raise ValueError(f"num_speculative_tokens must be in [1, {MAX_SPECULATIVE_TOKENS}], "
                         f"got {config.num_speculative_tokens}")
    if config.speculative_batch_limit < 1:
        raise ValueError(f"speculative_batch_limit must be at least 1, got {config.speculative_batch_limit}")
    p = config.speculative_accept_prob
    if p is not None and not 0.0 <= p <= 1.0:
        raise ValueError(f"speculative_accept_prob must be in [0, 1], got {p}")
    if p is not None and config.speculative == "off":
        raise ValueError("speculative_accept_prob needs speculative decoding on (speculative=ngram)")


def draft_model(config: Config) -> str | None:
    """The draft model's reference (an alias, a directory or a .gguf file) of speculative=draft:MODEL, else None."""
    if not config.speculative.startswith(DRAFT_PREFIX):
        return None
    return config.speculative[len(DRAFT_PREFIX):].strip() or None
