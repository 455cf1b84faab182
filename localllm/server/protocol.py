"""Every message between the daemon's front end and an engine process, and how it travels.

Each message is a frozen msgspec struct, tagged with its class name, msgpack-encoded and sent over one of two
one-way multiprocessing pipes with send_bytes/recv_bytes. Never pickle: a message carries data only, and bytes
that do not decode to a declared message are refused, never executed. Only token ids and numbers cross, never
text. The front end's first message, Start, and the engine's answer, Loaded, both carry PROTOCOL_VERSION, and
each side checks the other's.
"""
from __future__ import annotations

from typing import Union

import msgspec

from localllm.config import Config
from localllm.engine.events import EmbeddingEvent, SpeculationStats, TokenEvent
from localllm.loader.pooling_config import PoolingConfig
from localllm.pooling_params import PoolingParams
from localllm.sampling_params import SamplingParams

# Raise on any change to the messages below.
PROTOCOL_VERSION = 8


class Message(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Encoded as [tag, field, ...]: field names never cross."""


# front end -> engine
class Start(Message):
    """The first message: which model to load, and how."""
    protocol: int
    config: Config


class AddRequest(Message):
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


class EmbedRequest(Message):
    """A pooling request: the prompt is computed (never sampled) and pooled into one vector (an EmbeddingEvent)."""
    request_id: str
    prompt_token_ids: list[int]
    params: PoolingParams


class AbortRequests(Message):
    request_ids: list[str]


class FinishSequence(Message):
    """A stop string ended completion `index` of a request in the front end."""
    request_id: str
    index: int
    reason: str = "stop"


class Shutdown(Message):
    pass


# engine -> front end
class EngineStats(msgspec.Struct, frozen=True, array_like=True):
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
    draft_tokens: int = 0       # speculative decoding: draft tokens verified
    accepted_tokens: int = 0    # of those, accepted
    verify_steps: int = 0       # sequence-steps that verified drafts


def speculation_summary(draft_tokens: int, accepted_tokens: int, verify_steps: int) -> dict:
    """Speculative decoding's counters and what they mean, as the status endpoint, ps and /metrics show them."""
    stats = SpeculationStats(draft_tokens, accepted_tokens, verify_steps)
    return {"draft_tokens": draft_tokens, "accepted_tokens": accepted_tokens, "verify_steps": verify_steps,
            "acceptance_rate": stats.acceptance_rate, "mean_accepted_length": stats.mean_accepted_length}


def speculation_status(stats: EngineStats) -> dict:
    return speculation_summary(stats.draft_tokens, stats.accepted_tokens, stats.verify_steps)


class RankMemory(msgspec.Struct, frozen=True, array_like=True):
    """What one tensor-parallel rank's GPU holds for the model."""
    device: str
    weight_bytes: int
    kv_cache_bytes: int


class ModelResolved(Message):
    """Where the model's files are, sent before its weights load, so that the front end reads the tokenizer
    meanwhile."""
    model_dir: str


class Loaded(Message):
    protocol: int
    model_dir: str
    device: str
    dtype: str
    max_model_len: int
    vocab_size: int
    block_size: int
    num_blocks: int
    param_bytes: int                     # the weights as stored (quantized blocks take their real bytes)
    kv_cache_bytes: int
    eos_token_ids: list[int]
    num_threads: int   # the CPU threads of the engine process (torch's intra-op pool)
    stats: EngineStats = EngineStats()
    tensor_parallel_size: int = 1
    worker_pids: list[int] = []          # the tensor-parallel workers under the engine process
    gpus: list[RankMemory] = []          # one per rank; empty on CPU
    pooling: PoolingConfig | None = None   # an embedding model's pooling; None for a model that only generates
    generates: bool = True               # False for an embedding model without an LM head
    quantization: str = ""               # what the weights run as (Q4_K_M, AWQ-int4, ...); "" = dense, in dtype
    speculative: str = "off"             # speculative decoding: off, ngram or draft:MODEL


class LoadFailed(Message):
    error_type: str   # the exception's class name, e.g. ModelNotFoundError
    message: str


class StepOutput(Message):
    events: list[TokenEvent]
    stats: EngineStats
    embeddings: list[EmbeddingEvent] = []   # the pooling requests the step finished


class RequestFailed(Message):
    """The core refused a request (e.g. a prompt too long): nothing was scheduled for it."""
    request_id: str
    error_type: str
    message: str


class MessageRefused(Message):
    """The engine received bytes that are not a message of this protocol, and ignored them."""
    reason: str


class EngineFailed(Message):
    """The engine hit an unexpected error and is exiting; every request in it is lost."""
    message: str


ToEngine = Union[Start, AddRequest, EmbedRequest, AbortRequests, FinishSequence, Shutdown]
FromEngine = Union[ModelResolved, Loaded, LoadFailed, StepOutput, RequestFailed, MessageRefused, EngineFailed]

# msgspec.DecodeError (ValidationError included): what receive() raises for bytes that are no declared message.
DecodeError = msgspec.DecodeError


class ProtocolError(Exception):
    pass


def check_version(theirs: int, who: str) -> None:
    if theirs != PROTOCOL_VERSION:
        raise ProtocolError(f"{who} speaks protocol version {theirs}, this process {PROTOCOL_VERSION}")


class Sender:
    """The sending end of a one-way pipe."""

    def __init__(self, connection):
        self.connection = connection
        self._encoder = msgspec.msgpack.Encoder()

    def encode(self, message: Message) -> bytes:
        """Raises UnicodeEncodeError for text that is not valid Unicode (a lone surrogate)."""
        return self._encoder.encode(message)

    def send_bytes(self, data: bytes) -> None:
        self.connection.send_bytes(data)

    def send(self, message: Message) -> None:
        self.send_bytes(self.encode(message))


class Receiver:
    """The receiving end of a one-way pipe, which accepts the messages of one direction (ToEngine or FromEngine)."""

    def __init__(self, connection, accepts):
        self.connection = connection
        self._decoder = msgspec.msgpack.Decoder(accepts)

    def receive(self):
        """The next message; raises DecodeError for bytes that are not one (a pickle, say), EOFError once the
        other end has closed."""
        return self._decoder.decode(self.connection.recv_bytes())

    def poll(self, timeout: float | None = 0.0) -> bool:
        return self.connection.poll(timeout)
