"""Constrained decoding in the engine: an llguidance matcher per guided sequence, advanced by each token the
sequence keeps, and each step's masks of the tokens those sequences may take next.

Masks are computed on the host (llguidance's executor, over its own threads) into a pinned buffer and copied to
the device without waiting; the core computes them after reading back the previous step's tokens and before
sampling this one's, so with overlapped steps the host works on them while the device runs the forward."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import llguidance
import llguidance.numpy
import torch

from localllm.cpu_cores import available_cores
from localllm.engine.batch import to_device
from localllm.engine.request import Sequence
from localllm.guidance import llguidance_tokenizer, new_matcher
from localllm.sampling_params import Guidance


def mask_threads() -> int:
    """llguidance's own default share of the cores (80%, at most 32), but of the cores this process may use: it
    counts the host's, and a pool larger than a container's CPU quota stalls whole steps when the quota runs out."""
    return max(1, min(32, round(0.8 * available_cores())))


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
        # one byte per token rather than int32 shifts: a quarter of the memory traffic on a CPU
        shifts = torch.arange(8, dtype=torch.uint8, device=self.bits.device)
        allowed = (self.bits.view(torch.uint8).unsqueeze(-1) >> shifts) & 1
        banned = allowed.flatten(1)[:, :logits.shape[1]] == 0
        if self.rows is None:
            logits.masked_fill_(banned, -math.inf)
        else:
            logits[self.rows] = logits[self.rows].masked_fill(banned, -math.inf)


class GrammarMatchers:
    """Starts the matchers of guided sequences and computes their masks, for one model's tokenizer."""

    def __init__(self, tokenizer_file: Path, eos_token_ids: set[int], vocab_size: int, device: torch.device):
        if not tokenizer_file.is_file():
            raise ValueError(f"guided decoding needs the model's tokenizer, and {tokenizer_file} does not exist")
        # the logits' width, which may exceed the tokenizer's vocabulary (padding rows are never allowed)
        self.tokenizer = llguidance_tokenizer(tokenizer_file.read_text(encoding="utf-8"), vocab_size,
                                              sorted(eos_token_ids) or None)
        self.words = -(-vocab_size // 32)
        self.device = device
        self.executor = llguidance.LLExecutor(mask_threads())

    def start(self, guidance: Guidance) -> llguidance.LLMatcher:
        """A matcher at the start of the grammar, compiled anew (~1-2 ms for a JSON schema); ValueError naming what
        is wrong with a grammar that does not compile. Not a deep_copy of a cached one: copies share state that
        llguidance's threads then take turns on, and 256 copies' masks took as long on 64 cores as on one."""
        return new_matcher(guidance, self.tokenizer)

    def masks(self, seqs: list[Sequence]) -> TokenMask | None:
        """The masks of this step's guided rows (seqs in row order), None when none is guided. Each matcher has
        consumed every token of its sequence: the core calls this once the step before has been read back."""
        guided = [(row, seq.matcher) for row, seq in enumerate(seqs) if seq.matcher is not None and not seq.is_finished]
        if not guided:
            return None
        on_gpu = self.device.type == "cuda"
        bits = torch.empty((len(guided), self.words), dtype=torch.int32, pin_memory=on_gpu)
        llguidance.numpy.fill_next_token_bitmask_par(
            self.executor, [(matcher, i) for i, (_, matcher) in enumerate(guided)], bits.numpy())
        rows = [row for row, _ in guided]
        row_index = None if len(rows) == len(seqs) else to_device(torch.tensor(rows), self.device)
        return TokenMask(bits.to(self.device, non_blocking=on_gpu), row_index)


def grammar_ended(matcher: llguidance.LLMatcher, token_id: int) -> bool:
    """Advances the matcher by the token its sequence kept. True when the grammar is complete (only the end of the
    sequence could follow) or cannot go on (the token broke it, which the mask allows only when it left no token)."""
    return not matcher.consume_token(token_id) or matcher.is_stopped()
