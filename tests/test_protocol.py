"""The wire between the daemon's front end and an engine process: every declared message round-trips through a
real pipe, and bytes that are no declared message (a pickle above all) are refused, never unpickled, by the real
engine process, which then goes on serving."""
from __future__ import annotations

import multiprocessing
import pickle
import threading
import typing
from pathlib import Path

import msgspec
import pytest

from localllm import LLM, SamplingParams
from localllm.config import Config
from localllm.engine.events import EmbeddingEvent, SampledToken, TokenEvent
from localllm.loader.pooling_config import PoolingConfig
from localllm.pooling_params import PoolingParams
from localllm.sampling_params import Guidance
from localllm.server import engine_process
from localllm.server.engine_client import EngineClient
from localllm.server.protocol import (PROTOCOL_VERSION, AbortRequests, AddRequest, DecodeError, EmbedRequest,
                                      EngineFailed, EngineStats, FinishSequence, FromEngine, LoadFailed, Loaded,
                                      MessageRefused, ModelResolved, Receiver, RequestFailed, Sender, Shutdown, Start,
                                      StepOutput, ToEngine)
from tiny_models import build_model_dir

PARAMS = SamplingParams(n=2, temperature=0.7, top_k=5, seed=3, max_tokens=9, stop=["x", "yz"], stop_token_ids=[4],
                        logprobs=2)
STATS = EngineStats(running=1, waiting=2, blocks_total=10, blocks_used=3, blocks_cached=4, blocks_free=3,
                    prefix_queries=7, prefix_hits=4, preemptions=1, steps=12)
EVENTS = [TokenEvent("r1", 0, SampledToken(17, -0.25, [(17, -0.25), (3, -1.5)]), None),
          TokenEvent("r1", 1, SampledToken(4), "stop")]
MESSAGES = [
    Start(PROTOCOL_VERSION, Config(model="/models/x", block_size=4, num_kv_blocks=64, overlap_steps=True)),
    AddRequest("r1", [1, 2, 3], PARAMS),
    EmbedRequest("e1", [1, 2, 3], PoolingParams(dimensions=32)),
    AddRequest("r2", [4], SamplingParams(max_tokens=30, guidance=Guidance("json_schema", '{"type": "object"}'))),
    AbortRequests(["r1", "r2"]),
    FinishSequence("r1", 1, "stop"),
    Shutdown(),
    ModelResolved("/models/x"),
    Loaded(PROTOCOL_VERSION, "/models/x", "cpu", "float32", 1024, 331, 4, 64, 1000, 2000, [2, 7], 2, STATS),
    Loaded(PROTOCOL_VERSION, "/models/e", "cpu", "float32", 1024, 331, 4, 64, 1000, 2000, [2], 2, STATS,
           pooling=PoolingConfig("last", True, 64, [32, 64]), generates=False),
    LoadFailed("ModelNotFoundError", "no such model"),
    StepOutput(EVENTS, STATS),
    StepOutput([], STATS, [EmbeddingEvent("e1", [0.25, -0.5, 1e-30])]),
    RequestFailed("r1", "PromptTooLongError", "too long"),
    MessageRefused("not a message"),
    EngineFailed("RuntimeError: boom"),
]


def pipe(accepts):
    receiving, sending = multiprocessing.Pipe(duplex=False)
    return Sender(sending), Receiver(receiving, accepts)


def test_every_declared_message_round_trips():
    assert {type(m) for m in MESSAGES} == set(typing.get_args(ToEngine)) | set(typing.get_args(FromEngine))
    for message in MESSAGES:
        accepts = ToEngine if type(message) in typing.get_args(ToEngine) else FromEngine
        sender, receiver = pipe(accepts)
        sender.send(message)
        received = receiver.receive()
        assert received == message and type(received) is type(message)


def test_a_message_of_the_other_direction_or_with_bad_fields_is_refused():
    sender, receiver = pipe(ToEngine)
    sender.send(Loaded(PROTOCOL_VERSION, "/m", "cpu", "float32", 8, 8, 4, 4, 0, 0, [], 1))
    with pytest.raises(DecodeError):
        receiver.receive()
    sender.connection.send_bytes(b"\x93\xaaAddRequest\xa2r1\x91\xa1x")   # a prompt id that is a string
    with pytest.raises(DecodeError):
        receiver.receive()
    sender.connection.send_bytes(msgspec.msgpack.encode(["AddRequest", "r1", [1], {"guidance": {"kind": "regex"}}]))
    with pytest.raises(DecodeError, match="guidance kind must be one of"):
        receiver.receive()


def test_a_message_that_cannot_be_encoded_fails_its_sender_and_the_pipe_carries_on():
    """Encoding happens in the caller: text that is no valid Unicode (a lone surrogate in a stop string) raises
    there, and the writer thread goes on delivering the messages that follow."""
    receiving, sending = multiprocessing.Pipe(duplex=False)
    client = EngineClient("m", Config())
    client._to_engine = Sender(sending)
    threading.Thread(target=client._write_loop, daemon=True).start()
    with pytest.raises(UnicodeEncodeError):
        client._send(AddRequest("r1", [1, 2], SamplingParams(stop=["\ud800"])))
    client._send(AbortRequests(["r2"]))
    receiver = Receiver(receiving, ToEngine)
    assert receiver.poll(30) and receiver.receive() == AbortRequests(["r2"])
    client._outgoing.put(None)   # ends the writer thread


class WritesAFile:
    """Unpickling this would create `path`: the classic pickle payload that runs code."""
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir("llama", tmp_path_factory.mktemp("llama"))


def start_engine(model_dir: Path, start: Start | bytes):
    ctx = multiprocessing.get_context("spawn")
    engine_in, to_engine = ctx.Pipe(duplex=False)
    from_engine, engine_out = ctx.Pipe(duplex=False)
    process = ctx.Process(target=engine_process.main, args=(engine_in, engine_out), daemon=True)
    process.start()
    engine_in.close()
    engine_out.close()
    sender, receiver = Sender(to_engine), Receiver(from_engine, FromEngine)
    if isinstance(start, bytes):
        to_engine.send_bytes(start)
    else:
        sender.send(start)
    return process, sender, receiver


def next_message(receiver: Receiver, kind: type):
    """The next message of `kind`, skipping the counters an idle engine sends."""
    while receiver.poll(300):   # a loaded machine may take minutes to spawn and load
        message = receiver.receive()
        if isinstance(message, kind):
            return message
        assert isinstance(message, StepOutput) and not message.events, message
    raise AssertionError(f"no {kind.__name__} within 300 s")


def test_the_engine_refuses_a_pickle_and_goes_on_serving(model_dir, tmp_path):
    config = Config(model=str(model_dir), block_size=4, num_kv_blocks=64, num_threads=1)
    process, sender, receiver = start_engine(model_dir, Start(PROTOCOL_VERSION, config))
    try:
        assert next_message(receiver, ModelResolved).model_dir == str(model_dir)   # before the weights load
        loaded = next_message(receiver, Loaded)
        assert (loaded.protocol, loaded.num_blocks, loaded.block_size) == (PROTOCOL_VERSION, 64, 4)
        marker = tmp_path / "unpickled"
        sender.connection.send_bytes(pickle.dumps(WritesAFile(marker)))
        sender.connection.send_bytes(pickle.dumps(AddRequest("r0", [1, 2], SamplingParams())))
        assert next_message(receiver, MessageRefused).reason   # msgspec's account of why it is not a message
        assert next_message(receiver, MessageRefused).reason
        assert not marker.exists()
        prompt, params = [5, 17, 42, 99, 3], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
        sender.send(AddRequest("r1", prompt, params))
        tokens, finish = [], None
        while finish is None:
            for event in next_message(receiver, StepOutput).events:
                tokens.append(event.sampled.token_id)
                finish = event.finish_reason
        offline = LLM(str(model_dir), block_size=4, num_kv_blocks=64).generate([prompt], params)[0].outputs[0]
        assert (tokens, finish) == (offline.token_ids, "length")
        sender.send(Shutdown())
        process.join(30)
        assert process.exitcode == 0
    finally:
        process.kill()
        process.join()


@pytest.mark.parametrize("first", ["pickle", "old version"])
def test_the_handshake_refuses_another_protocol(model_dir, first):
    config = Config(model=str(model_dir))
    start = pickle.dumps(Start(PROTOCOL_VERSION, config)) if first == "pickle" else Start(PROTOCOL_VERSION + 1, config)
    process, _, receiver = start_engine(model_dir, start)
    try:
        failed = next_message(receiver, LoadFailed)
        assert failed.error_type == "ProtocolError"
        if first == "old version":
            assert f"protocol version {PROTOCOL_VERSION + 1}, this process {PROTOCOL_VERSION}" in failed.message
        process.join(30)
        assert process.exitcode == 0
    finally:
        process.kill()
        process.join()
