"""Constrained decoding in the engine: an llguidance matcher per guided sequence, advanced by each token the
sequence keeps, and each step's masks of the tokens those sequences may take next.

A grammar seen before compiles on a thread pool while the request's prompt is computed (only its first token needs
the matcher); a new one compiles at once, so that a grammar that does not compile fails its request there. The
matchers of a step's tokens advance in one call. Masks are computed on the host (llguidance's executor, over its
own threads, started from a thread of their own so that the caller goes on) into a pinned buffer and copied to the
device without waiting. With overlapped steps the core starts a guided step's masks as soon as the step before has
been read back and its tokens consumed, and samples it at the start of the next step, just before that step's
forward: the masks are computed while the host does the rest of the bookkeeping and the device runs the forward."""
from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import llguidance
import llguidance.numpy
import torch

from localllm.cpu_cores import available_cores
from localllm.engine.batch import to_device
from localllm.engine.request import Sequence
from localllm.guidance import grammar_of, llguidance_tokenizer, new_matcher
from localllm.sampling_params import Guidance


# the pool size from which advancing matchers through it beats doing it in the caller: on 2 cores, 256 matchers took
# 2.1 ms one by one and 4.1 ms through the pool (its hand-offs cost more than a consume, a few microseconds)
PARALLEL_CONSUME_THREADS = 4
# grammars remembered as compiling with the engine's tokenizer (their llguidance text, a few kB for a JSON schema)
KNOWN_GRAMMARS = 256


def mask_threads() -> int:
    """llguidance's own default share of the cores (80%, at most 32), but of the cores this process may use: it
    counts the host's, and a pool larger than a container's CPU quota stalls whole steps when the quota runs out."""
    return max(1, min(32, round(0.8 * available_cores())))


@functools.cache
def bit_values(device: torch.device) -> torch.Tensor:
    """The value of each bit of a byte, on the device: made once, as a copy from pageable memory each step could
    make the host wait for the device."""
    return torch.tensor([1 << bit for bit in range(8)], dtype=torch.uint8, device=device)


@dataclass(frozen=True)
class TokenMask:
    """The tokens some rows of a step may take. bits: [rows, ceil(vocab / 32)] int32 on the logits' device, bit j of
    word w set = token 32 w + j allowed (llguidance's layout). rows: which rows of the logits those are (a long
    tensor on the device), None for all of them in order."""
    bits: torch.Tensor
    rows: torch.Tensor | None

    @torch.inference_mode()   # the runner's logits are inference tensors
    def apply_(self, logits: torch.Tensor) -> None:
        """Sets the logits of the tokens each row may not take to -inf, in place."""
        # one byte per token rather than int32 shifts: a quarter of the memory traffic; and one op per bit test
        bit = bit_values(self.bits.device)
        banned = (self.bits.view(torch.uint8).unsqueeze(-1) & bit).flatten(1)[:, :logits.shape[1]] == 0
        if self.rows is None:
            logits.masked_fill_(banned, -math.inf)
        else:
            logits[self.rows] = logits[self.rows].masked_fill(banned, -math.inf)


class GrammarMatchers:
    """Starts the matchers of guided sequences, advances them by their tokens and computes their masks, for one
    model's tokenizer."""

    def __init__(self, tokenizer_file: Path, eos_token_ids: set[int], vocab_size: int, device: torch.device):
        if not tokenizer_file.is_file():
            raise ValueError(f"guided decoding needs the model's tokenizer, and {tokenizer_file} does not exist")
        # the logits' width, which may exceed the tokenizer's vocabulary (padding rows are never allowed)
        self.tokenizer = llguidance_tokenizer(tokenizer_file.read_text(encoding="utf-8"), vocab_size,
                                              sorted(eos_token_ids) or None)
        self.words = -(-vocab_size // 32)
        self.device = device
        threads = mask_threads()
        self.executor = llguidance.LLExecutor(threads)
        # handing a few microseconds of work per matcher to the pool only pays when the pool can split it
        self.consumes_in_parallel = threads >= PARALLEL_CONSUME_THREADS
        # one caller thread: a step's masks are computed (llguidance releases the GIL) while the host goes on
        self.background = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        # compiling releases the GIL too: 256 requests' matchers (~1.5-2.5 ms each) stalled the engine's loop 0.4 s
        self.compiler = ThreadPoolExecutor(threads, thread_name_prefix="grammar-compile")
        self.known_grammars: OrderedDict[str, None] = OrderedDict()

    def start(self, guidance: Guidance, background: bool = True) -> llguidance.LLMatcher | Future:
        """A matcher at the start of the grammar, compiled anew (~1-2 ms for a JSON schema): for a grammar that has
        compiled before (with this tokenizer: the outcome is the same), a Future of it compiled on the pool unless
        not background; otherwise compiled now, ValueError naming what is wrong with a grammar that does not
        compile. Not a deep_copy of a cached one: copies share state that llguidance's threads then take turns on,
        and 256 copies' masks took as long on 64 cores as on one."""
        grammar = grammar_of(guidance)
        if grammar in self.known_grammars:
            self.known_grammars.move_to_end(grammar)
            if background:
                return self.compiler.submit(new_matcher, guidance, self.tokenizer, grammar)
            return new_matcher(guidance, self.tokenizer, grammar)
        matcher = new_matcher(guidance, self.tokenizer, grammar)
        self.known_grammars[grammar] = None
        if len(self.known_grammars) > KNOWN_GRAMMARS:
            self.known_grammars.popitem(last=False)
        return matcher

    def advance(self, seqs: list[Sequence], token_ids: list[int]) -> set[Sequence]:
        """Advances the matchers of the guided, unfinished sequences by the tokens they keep (token_ids[i] is
        seqs[i]'s), all in one call; those whose grammar ended: complete, so only the end of the sequence could
        follow, or broken by the token, which the mask allows only when it left no token."""
        guided = [(seq, token_id) for seq, token_id in zip(seqs, token_ids)
                  if seq.matcher is not None and not seq.is_finished]
        for seq, _ in guided:
            compiled(seq)
        if len(guided) > 1 and self.consumes_in_parallel:
            consumed = self.executor.consume_token_par([(seq.matcher, token_id) for seq, token_id in guided])
        else:
            consumed = [seq.matcher.consume_token(token_id) for seq, token_id in guided]
        return {seq for (seq, _), ok in zip(guided, consumed) if not ok or seq.matcher.is_stopped()}

    def start_masks(self, seqs: list[Sequence], background: bool = True) -> PendingMasks | None:
        """Starts computing the masks of this step's guided rows (seqs in row order); None when none is guided. Each
        matcher must have consumed every token of its sequence, and none may be touched until the result is taken.
        background: computed on the mask thread, so the caller goes on meanwhile; else before this returns."""
        rows = [row for row, seq in enumerate(seqs) if seq.matcher is not None and not seq.is_finished]
        if not rows:
            return None
        for row in rows:
            compiled(seqs[row])
        bits = torch.empty((len(rows), self.words), dtype=torch.int32, pin_memory=self.device.type == "cuda")
        fill = functools.partial(llguidance.numpy.fill_next_token_bitmask_par, self.executor,
                                 [(seqs[row].matcher, i) for i, row in enumerate(rows)], bits.numpy())
        done = self._start_in_background(fill) if background else None
        if done is None:
            fill()
        return PendingMasks(bits, None if len(rows) == len(seqs) else rows, done, self.device)

    def _start_in_background(self, fill) -> Future:
        """Runs fill on the mask thread, returning once the thread has started it. Without that hand-over the thread
        waits for the GIL while this one runs Python (up to the interpreter's 5 ms switch interval), and the masks
        start late; llguidance releases the GIL as soon as it is called."""
        started = threading.Event()

        def run() -> None:
            started.set()
            fill()
        done = self.background.submit(run)
        started.wait()
        return done

    def masks(self, seqs: list[Sequence]) -> TokenMask | None:
        """The masks of this step's guided rows, computed before this returns (see start_masks)."""
        pending = self.start_masks(seqs, background=False)
        return pending.result() if pending is not None else None


def compiled(seq: Sequence) -> llguidance.LLMatcher:
    """The sequence's matcher, waiting for it if it is still being compiled (GrammarMatchers.start)."""
    if isinstance(seq.matcher, Future):
        seq.matcher = seq.matcher.result()
    return seq.matcher


@dataclass(frozen=True)
class PendingMasks:
    """Masks being computed into a (pinned, on a GPU) host buffer, by the mask thread (done) or already (None)."""
    bits: torch.Tensor
    rows: list[int] | None
    done: Future | None
    device: torch.device

    def result(self) -> TokenMask:
        """The masks on the device, once computed; the copy does not make the host wait for the device."""
        if self.done is not None:
            self.done.result()   # raises what the computation raised
        on_gpu = self.device.type == "cuda"
        rows = None if self.rows is None else to_device(torch.tensor(self.rows), self.device)
        return TokenMask(self.bits.to(self.device, non_blocking=on_gpu), rows)
