"""The messages between the daemon's front end and an engine process. They travel pickled over two one-way
multiprocessing pipes; only token ids and numbers cross, never text."""
from __future__ import annotations

from dataclasses import dataclass, field

from localllm.engine.core import TokenEvent
from localllm.sampling_params import SamplingParams


# front end -> engine
@dataclass
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass
class AbortRequests:
    request_ids: list[str]


@dataclass
class FinishSequence:
    """A stop string ended completion `index` of a request in the front end."""
    request_id: str
    index: int
    reason: str = "stop"


@dataclass
class Shutdown:
    pass


# engine -> front end
@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    blocks_total: int = 0
    blocks_used: int = 0        # referenced by a live sequence
    blocks_cached: int = 0      # free, but still holding a reusable prefix
    blocks_free: int = 0        # free and empty; total = used + cached + free
    prefix_queries: int = 0     # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0
    preemptions: int = 0
    steps: int = 0


@dataclass
class RankMemory:
    """What one tensor-parallel rank's GPU holds for the model."""
    device: str
    weight_bytes: int
    kv_cache_bytes: int


@dataclass
class Loaded:
    model_dir: str
    device: str
    dtype: str
    max_model_len: int
    vocab_size: int
    block_size: int
    num_blocks: int
    param_bytes: int
    kv_cache_bytes: int
    eos_token_ids: list[int]
    stats: EngineStats = field(default_factory=EngineStats)
    tensor_parallel_size: int = 1
    worker_pids: list[int] = field(default_factory=list)   # the tensor-parallel workers under the engine process
    gpus: list[RankMemory] = field(default_factory=list)    # one per rank; empty on CPU


@dataclass
class LoadFailed:
    error_type: str   # the exception's class name, e.g. ModelNotFoundError
    message: str


@dataclass
class StepOutput:
    events: list[TokenEvent]
    stats: EngineStats


@dataclass
class RequestFailed:
    """The core refused a request (e.g. a prompt too long): nothing was scheduled for it."""
    request_id: str
    error_type: str
    message: str


@dataclass
class EngineFailed:
    """The engine hit an unexpected error and is exiting; every request in it is lost."""
    message: str
