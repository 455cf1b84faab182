"""The engine core: token ids in, token ids (or pooled vectors) out. One step = schedule -> forward -> sample and
pool -> bookkeeping. Text (tokenizing, detokenizing, stop strings) lives a layer above, in LLMEngine."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import contextlib
import functools
from typing import Callable

import torch

from localllm.config import Config
from localllm.engine.batch import H, PackedStep, PoolingSlice, unpack
from localllm.engine.block_manager import BlockManager
from localllm.engine.draft_model import DraftProposer, open_draft
from localllm.engine.model_runner import ModelRunner, check_kv_cache_dtype
from localllm.engine.rank_setup import set_up_rank
from localllm.engine.request import Sequence
from localllm.engine.request_checks import check_generation, check_in_vocabulary, check_pooling
from localllm.engine.events import EmbeddingEvent, SampledToken, TokenEvent
from localllm.engine.grammar import GrammarMatchers, PendingMasks
from localllm.engine.pooler import Pooler
from localllm.engine.prompt_scores import score_prompts
from localllm.engine.sampler import Sampler
from localllm.engine.speculation import Speculator
from localllm.engine.verification import Verified, Verifier, sampling_row
from localllm.engine.scheduler import Scheduler, SchedulerOutput
from localllm.engine.tensor_parallel import TensorParallel, resolve_degree
from localllm.errors import PromptTooLongError
from localllm.layers.allreduce import check_allreduce_kind
from localllm.loader.pooling_config import PoolingConfig
from localllm.pooling_params import PoolingParams
from localllm.quantization import keeps_blocks
from localllm.sampling_params import SamplingParams


@dataclass(frozen=True)
class ForwardedStep:
    """A step whose forward is queued on the device and whose tokens are not sampled yet."""
    seqs: list[Sequence]
    logits: torch.Tensor
    stays_on_device: bool
    num_drafts: list[int]        # per sequence: drafts it verifies (its rows of logits are one more)
    masks: PendingMasks | None = None   # a guided step's, started before it is sampled

    @property
    def guided(self) -> bool:
        return any(seq.matcher is not None for seq in self.seqs)

    @property
    def row_seqs(self) -> list[Sequence]:
        """The sequence of each row of logits."""
        return [seq for seq, k in zip(self.seqs, self.num_drafts) for _ in range(k + 1)]


@dataclass(frozen=True)
class InFlightStep:
    """A step queued on the device whose sampled tokens the host has not read yet."""
    seqs: list[Sequence]
    token_ids: torch.Tensor        # on the device: the next step's inputs come from here
    host_token_ids: torch.Tensor   # pinned copy, valid once `ready` has passed
    ready: torch.cuda.Event | None


def resolve_device(config: Config) -> torch.device:
    if config.device != "auto":
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def keeps_gguf_blocks(config: Config) -> bool:
    """Whether a GGUF model is opened in the form whose matrices stay quantized blocks (loader.gguf)."""
    return keeps_blocks(config.quantization, resolve_device(config).type)


def resolve_dtype(config: Config, device: torch.device) -> torch.dtype:
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class EngineCore:
    def __init__(self, config: Config, model_dir: Path | None, hf_config, eos_token_ids: set[int],
                 on_worker_failure=None, pooling: PoolingConfig | None = None, tokenizer_dir: Path | None = None):
        """model_dir None = random weights. on_worker_failure(message): what to do, from a watchdog thread, when
        a tensor-parallel worker dies (default: make the step waiting on it fail). pooling: how the model makes
        embeddings (None: it makes none). tokenizer_dir: where the tokenizer.json that grammars are matched against
        is (default: model_dir's)."""
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.config = config
        self.device = resolve_device(config)
        check_kv_cache_dtype(config.kv_cache_dtype, self.device)
        self.dtype = resolve_dtype(config, self.device)
        model_len = config.max_model_len or hf_config.max_position_embeddings
        self.tensor_parallel_size = resolve_degree(config, hf_config, self.device, self.dtype, model_len, model_dir)
        self.tp: TensorParallel | None = None
        self.runner: ModelRunner | None = None   # until set_up_rank has built it
        if self.tensor_parallel_size > 1:
            check_allreduce_kind(config.tp_allreduce, self.device)
            self.tp = TensorParallel.start(self.tensor_parallel_size, config, hf_config, model_dir, self.device,
                                           self.dtype, on_worker_failure)
            self.device = self.tp.device
        try:
            draft = open_draft(config, hf_config, self.tensor_parallel_size, keeps_gguf_blocks(config))
            with self._worker_failures():
                setup = set_up_rank(config, hf_config, model_dir, self.device, self.dtype, draft)
        except BaseException:
            self.shutdown()
            raise
        self.runner, self.batch_builder = setup.runner, setup.builder
        self.num_blocks, self.max_model_len = setup.num_blocks, setup.max_model_len
        self.vocab_size = hf_config.vocab_size
        self.eos_token_ids = eos_token_ids
        self.block_manager = BlockManager(self.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_batched_tokens, config.max_num_seqs,
                                   config.enable_chunked_prefill, self.max_model_len)
        # overlap only pays where the forward runs asynchronously to the host
        self.overlap = config.overlap_steps if config.overlap_steps is not None else self.device.type == "cuda"
        self.in_flight: InFlightStep | None = None
        self.unsampled: ForwardedStep | None = None   # a guided step whose masks are being computed
        self.sampler = Sampler(eos_token_ids)
        self.draft = DraftProposer(setup.draft_runner, self.block_manager) if setup.draft_runner else None
        self.speculator = (Speculator(config.num_speculative_tokens, config.speculative_batch_limit, self.max_model_len,
                                      copy_from_start=config.speculative_accept_prob is not None, draft=self.draft)
                           if config.speculative != "off" else None)
        self.verifier = Verifier(self.sampler, config.speculative_accept_prob)
        self.pooler = Pooler(pooling) if pooling is not None else None
        self.embeddings: list[EmbeddingEvent] = []   # finished pooling requests, until take_embeddings()
        self.requests: dict[str, list[Sequence]] = {}
        self.tokenizer_dir = tokenizer_dir or model_dir
        self._grammar_matchers: GrammarMatchers | None = None

    def _worker_failures(self):
        return self.tp.failures() if self.tp else contextlib.nullcontext()

    @property
    def worker_pids(self) -> list[int]:
        return self.tp.workers.pids if self.tp else []

    def shutdown(self) -> None:
        """Stops the tensor-parallel workers (nothing to do without them); the core is unusable afterwards."""
        if self.tp is not None:
            if self.runner is not None:
                self.runner.release_graphs()
            self.tp.stop()

    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams | PoolingParams) -> None:
        """A generation request (SamplingParams) or a pooling one (PoolingParams: its prompt is computed and pooled
        into one vector, which take_embeddings() hands out)."""
        n = len(prompt_token_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        if isinstance(params, PoolingParams):
            check_pooling(params, n, self.max_model_len, self.pooler)
        else:
            check_generation(params, n, self.max_model_len, self.vocab_size, self.runner.has_lm_head)
        if not self.config.enable_chunked_prefill and n > self.config.max_num_batched_tokens:
            raise PromptTooLongError(f"the prompt has {n} tokens, more than max_num_batched_tokens "
                                     f"({self.config.max_num_batched_tokens}) with chunked prefill off")
        check_in_vocabulary(prompt_token_ids, self.vocab_size, "token id")
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        seq = self._new_sequence(request_id, prompt_token_ids, params, 0)
        self.requests[request_id] = [seq]
        self.scheduler.add(seq)

    def take_embeddings(self) -> list[EmbeddingEvent]:
        """The vectors of the pooling requests finished since the last call."""
        done, self.embeddings = self.embeddings, []
        return done

    def _new_sequence(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | PoolingParams,
                      index: int) -> Sequence:
        seq = Sequence(request_id, prompt_token_ids, params, index)
        if seq.pools:
            seq.shares_cached_prefix = self.pooler.shares_cached_prefix
        else:
            if params.seed is not None:   # completion i of a seeded request draws from seed + i
                seq.generator = torch.Generator(self.device).manual_seed(params.seed + index)
            if params.guidance is not None:   # a grammar that does not compile fails the request here
                seq.matcher = self.grammar_matchers.start(params.guidance)
        return seq

    @property
    def grammar_matchers(self) -> GrammarMatchers:
        """Built with the first guided request: reading the tokenizer's vocabulary takes about half a second."""
        if self._grammar_matchers is None:
            if self.tokenizer_dir is None:
                raise ValueError("guided decoding needs a tokenizer, and this engine was started without one")
            self._grammar_matchers = GrammarMatchers(Path(self.tokenizer_dir) / "tokenizer.json", self.eos_token_ids,
                                                     self.vocab_size, self.device)
        return self._grammar_matchers

    def abort_request(self, request_id: str) -> None:
        """Frees the request's blocks at once."""
        for seq in self.requests.pop(request_id, []):
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished or self.in_flight is not None or self.unsampled is not None

    def step(self) -> list[TokenEvent]:
        """Runs one step. With overlap on, the tokens it samples are read back during the next call, after that
        call has already queued its own step on the GPU, so the host's scheduling and bookkeeping run while the
        GPU computes; a sequence that turns out to have finished then wastes one token's work.
        A grammar's mask needs the token of the step in flight, so a guided step samples after the read-back: with
        overlap, at the start of the next call, its masks computed by llguidance's threads while the host returns
        this call's tokens and schedules the next step (the device runs the forward meanwhile)."""
        if self.speculator:
            self.speculator.propose(self.scheduler.running)
        out = self.scheduler.schedule()
        with self._worker_failures():
            inputs = self._pack(out) if out.scheduled else None   # more host work done while masks are computed
            if self.unsampled:   # its tokens are the inputs of this step's forward
                self.in_flight, self.unsampled = self._sample(self.unsampled), None
            forwarded = self._forward(out, *inputs) if inputs else None
            sampled = self._sample(forwarded) if forwarded and not forwarded.guided else None
        sample_later = forwarded is not None and forwarded.guided and forwarded.stays_on_device
        start_masks = functools.partial(self._sample_later, forwarded) if sample_later else None
        events = self._read_back(self.in_flight, start_masks) if self.in_flight else []
        self.in_flight = None
        if sample_later and self.unsampled is None:   # no step was read back
            self._sample_later(forwarded)
        elif forwarded and forwarded.guided and not sample_later:
            with self._worker_failures():
                sampled = self._sample(forwarded)
        if isinstance(sampled, InFlightStep):
            self.in_flight = sampled
        elif sampled:
            events += self._apply(*sampled)
        return events

    def _pack(self, out: SchedulerOutput) -> tuple[PackedStep, torch.Tensor]:
        """The step's inputs, packed and queued to the device: all they need of the step in flight is its tokens
        on the device, which the forward reads."""
        packed = self.batch_builder.pack(out.scheduled)
        seqs = packed.sampling_seqs
        stays_on_device = bool(seqs) and self.overlap and not any(self._needs_host(s) for s in seqs)
        packed.header[H["mirror_sampled"]] = int(stays_on_device)
        return packed, self.batch_builder.to_device(packed.payload)

    def _forward(self, out: SchedulerOutput, packed: PackedStep, payload: torch.Tensor) -> ForwardedStep | None:
        seqs = packed.sampling_seqs
        stays_on_device = bool(packed.header[H["mirror_sampled"]])
        if self.tp:   # the other ranks run the same forward
            self.tp.channel.send(packed)
        batch = unpack(packed.header, payload, self.device, self.in_flight.token_ids if self.in_flight else None)
        hidden = self.runner.hidden_states(batch)
        logits = self.runner.logits(hidden, batch)
        score_prompts(self.runner, hidden, batch, packed.scored)   # before any other rank's next collective
        if self.draft:   # its KV keeps up with every token the target computes
            self.draft.follow(batch)
        self.scheduler.step_done(out)
        if packed.pooling:
            self._pool(hidden, packed.pooling)
        if not seqs:
            return None
        for i, seq in enumerate(seqs):
            seq.num_pending += 1
            seq.pending_index = i
        return ForwardedStep(seqs, logits, stays_on_device, packed.num_drafts)

    def _needs_host(self, seq: Sequence) -> bool:
        """Whether the step's token must be read back at once: for the sampler, or for a proposal next step (a step
        verifying drafts always is: how many tokens it keeps is only known on the host)."""
        running = len(self.scheduler.running)
        speculates = self.speculator is not None and self.speculator.wants_tokens_on_host(seq, running)
        return Sampler.needs_host(seq.params) or bool(seq.draft_token_ids) or speculates

    def _sample(self, step: ForwardedStep) -> InFlightStep | tuple[list[Sequence], list[Verified]]:
        seqs, logits = step.seqs, step.logits
        if step.masks is not None:   # started while the host did the rest of the bookkeeping
            mask = step.masks.result()
        else:
            mask = self.grammar_matchers.masks(step.row_seqs) if step.guided else None
        if mask is not None:
            mask.apply_(logits)   # the runner's logits are this step's own
        if not step.stays_on_device:
            verified = self.verifier(logits, seqs, step.num_drafts)
            if self.speculator:
                for seq, result in zip(seqs, verified):
                    if result.num_drafts:
                        self.speculator.record(seq, result.num_drafts, result.num_accepted)
            return seqs, verified
        token_ids = Sampler.token_ids(logits, [sampling_row(s) for s in seqs])
        if self.tp:   # the next step's inputs may come from these, on every rank
            self.tp.channel.send_tokens(token_ids)
        host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=self.device.type == "cuda")
        host.copy_(token_ids, non_blocking=True)
        ready = torch.cuda.Event() if self.device.type == "cuda" else None
        if ready is not None:
            ready.record()
        return InFlightStep(seqs, token_ids, host, ready)

    def _sample_later(self, step: ForwardedStep) -> None:
        """Leaves a guided step to sample at the start of the next call, its masks computed meanwhile."""
        self.unsampled = replace(step, masks=self.grammar_matchers.start_masks(step.row_seqs))

    def _pool(self, hidden: torch.Tensor, slices: list[PoolingSlice]) -> None:
        """Finishes the pooling sequences this step completed (their blocks are freed at once). Reading their
        vectors back waits for the step, so a step that completes one does not overlap the next."""
        for seq, vector in self.pooler(hidden, slices):
            self.scheduler.finish(seq, "stop")
            self._forget_if_done(seq.request_id)
            self.embeddings.append(EmbeddingEvent(seq.request_id, vector.tolist()))

    def _read_back(self, step: InFlightStep, on_advanced: Callable[[], None] | None = None) -> list[TokenEvent]:
        if step.ready is not None:
            step.ready.synchronize()
        return self._apply(step.seqs, [Verified([SampledToken(t, None, None)], 0)
                                       for t in step.host_token_ids.tolist()], on_advanced)

    def _apply(self, seqs: list[Sequence], results: list[Verified],
               on_advanced: Callable[[], None] | None = None) -> list[TokenEvent]:
        """on_advanced: called once the grammars have consumed the tokens, before the rest of the bookkeeping (the
        next step's masks need only the former)."""
        ended = (self._grammar_matchers.advance(seqs, [result.tokens[0].token_id for result in results])
                 if self._grammar_matchers is not None else set())   # a guided sequence is never given drafts
        if on_advanced is not None:
            on_advanced()
        events = []
        for seq, result in zip(seqs, results):
            seq.num_pending -= 1
            if seq.is_finished:   # aborted or stopped while its token was in flight
                continue
            for token in result.tokens:
                reason = self._append(seq, token.token_id, seq in ended)
                events.append(TokenEvent(seq.request_id, seq.index, token, reason, seq.take_prompt_logprobs()))
                if reason:   # tokens accepted past a stop are dropped
                    break
            if result.num_drafts and not seq.is_finished:
                self.scheduler.keep_verified(seq, result.num_accepted)
        return events

    def _append(self, seq: Sequence, token_id: int, grammar_ended: bool = False) -> str | None:
        """Adds a token the sequence keeps; its finish reason, if the token ends it (it is then finished).
        grammar_ended: the token ended the sequence's grammar."""
        seq.token_ids.append(token_id)
        if seq.index == 0 and seq.params.n > 1 and seq.num_output_tokens == 1:
            self._fork(seq)
        reason = self._finish_reason(seq, token_id)
        if grammar_ended:
            reason = "stop"   # the output is complete (a length limit reached on its last token included)
        if reason:
            self.scheduler.finish(seq, reason)
            self._forget_if_done(seq.request_id)
        return reason

    def _fork(self, parent: Sequence) -> None:
        """The other n - 1 completions start from the parent's prompt, sharing its full prompt blocks."""
        for index in range(1, parent.params.n):
            child = self._new_sequence(parent.request_id, parent.prompt_token_ids, parent.params, index)
            child.prompt_logprobs, child.scored_through = parent.prompt_logprobs, parent.scored_through   # scored
            self.block_manager.fork(parent, child)
            self.requests[parent.request_id].append(child)
            self.scheduler.add(child, front=True)

    def _finish_reason(self, seq: Sequence, token_id: int) -> str | None:
        p = seq.params
        if token_id in p.stop_token_ids or (not p.ignore_eos and token_id in self.eos_token_ids):
            return "stop"
        if seq.reached_length_limit(self.max_model_len):
            return "length"
        return None

    def _forget_if_done(self, request_id: str) -> None:
        if all(s.is_finished for s in self.requests[request_id]):
            del self.requests[request_id]

    def finish_sequence(self, request_id: str, index: int, reason: str) -> None:
        """A layer above ended one completion (a stop string matched)."""
        for seq in self.requests.get(request_id, []):
            if seq.index == index and not seq.is_finished:
                self.scheduler.finish(seq, reason)
        if request_id in self.requests:
            self._forget_if_done(request_id)
