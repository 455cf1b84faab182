"""Speculative decoding's draft model (speculative=draft:MODEL): a small model with the target's vocabulary proposes
each speculating sequence's next tokens, greedily.

Its KV pool has as many blocks as the target's and is indexed by the same block tables and slot mappings, so every
token position has one slot in both pools. It runs every step the target runs, right after it (`follow`: its own
hidden states, no LM head), so its KV holds every token the target has computed; prefix-cache hits, forks and
preemption then need nothing of their own. To propose (`propose`), it runs K decode steps batched over the proposing
sequences: the first on each sequence's last token, each next one on the argmax of the step before, writing the
slots of the positions the target's verifying step will then fill (the draft's own KV there is rewritten when it
follows that step, and the slots of rejected drafts are overwritten later, as the target's are). On a GPU these
steps replay the draft model's decode graphs (query_len 1).

The drafts are argmaxes: a point mass, q = 1, so the verifier's rule (keep draft j with probability p_j(draft), and
at a rejection draw from p_j without it) is exact when sampling too, as it is for n-gram drafts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from localllm.config import Config, draft_model
from localllm.engine.batch import StepBatch, to_device
from localllm.engine.block_manager import BlockManager
from localllm.engine.model_runner import ModelRunner
from localllm.engine.request import Sequence
from localllm.errors import LocalLLMError, ModelNotFoundError
from localllm.layers.attention import AttentionMetadata


@dataclass(frozen=True)
class DraftFiles:
    model_dir: Path
    hf_config: object


def open_draft(config: Config, target_hf_config, tensor_parallel_size: int,
               keep_gguf_blocks: bool) -> DraftFiles | None:
    """The draft model of speculative=draft:MODEL, resolved like any model reference (None without one); a one-line
    error where it cannot serve as the target's draft."""
    from localllm.loader.hf_dir import open_model

    reference = draft_model(config)
    if reference is None:
        return None
    if tensor_parallel_size > 1:
        raise LocalLLMError("speculative decoding with a draft model needs tensor_parallel_size 1, "
                            f"got {tensor_parallel_size}")
    try:
        files = open_model(reference, keep_gguf_blocks)
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"draft model: {e}") from e
    ours, theirs = files.hf_config.vocab_size, target_hf_config.vocab_size
    if ours != theirs:
        raise LocalLLMError(f"the draft model {reference} has a vocabulary of {ours} tokens, the target's has "
                            f"{theirs}: a draft model must share the target's tokenizer")
    return DraftFiles(files.model_dir, files.hf_config)


class DraftProposer:
    def __init__(self, runner: ModelRunner, block_manager: BlockManager):
        self.runner = runner
        self.block_manager = block_manager
        self.block_size = block_manager.block_size
        self.index_dtype = torch.int32 if runner.device.type == "cuda" else torch.long   # as batch.unpack's

    def follow(self, batch: StepBatch) -> None:
        """Computes the draft model's KV of the step the target just ran."""
        self.runner.hidden_states(batch)

    def propose(self, seqs: list[Sequence], ks: list[int], num_running: int) -> list[list[int]]:
        """Up to ks[i] greedy drafts for each decoding sequence seqs[i] (whose last token is not computed yet); fewer
        where its blocks cannot hold them (see _fit)."""
        ks = [self._fit(seq, k, num_running) for seq, k in zip(seqs, ks)]
        chosen = [i for i, k in enumerate(ks) if k > 0]
        # longest first: the sequences of draft step i are then the first ones
        chosen.sort(key=lambda i: -ks[i])
        drafts = [[] for _ in seqs]
        if chosen:
            found = self._run([seqs[i] for i in chosen], [ks[i] for i in chosen])
            for i, tokens in zip(chosen, found):
                drafts[i] = tokens
        return drafts

    def _fit(self, seq: Sequence, k: int, headroom: int) -> int:
        """Drafts whose draft steps can write their slots: the k steps write positions last .. last + k - 1. Their
        blocks are allocated now (the verifying step needs them anyway, and the scheduler frees what it does not
        use) while the pool keeps a free block for each running sequence's next token, so no decode is preempted
        for drafts; otherwise k is cut to what the sequence's allocated blocks hold."""
        last = len(seq.token_ids) - 1
        manager = self.block_manager
        if manager.blocks_needed(seq, last + k) <= manager.num_free_blocks - headroom:
            manager.allocate(seq, last + k)
            return k
        return min(k, len(seq.block_table) * self.block_size - last)

    @torch.inference_mode()
    def _run(self, seqs: list[Sequence], ks: list[int]) -> list[list[int]]:
        """ks descending. Draft step i runs the first counts[i] sequences, each on the token step i - 1 proposed;
        one read-back at the end."""
        device, bs = self.runner.device, self.block_size
        counts = [sum(k > i for k in ks) for i in range(ks[0])]
        last = np.array([len(seq.token_ids) - 1 for seq in seqs])
        width = max(-(-(p + k) // bs) for p, k in zip(last, ks))
        tables = np.zeros((len(seqs), width), dtype=np.int64)
        for row, seq in enumerate(seqs):
            used = min(width, len(seq.block_table))
            tables[row, :used] = seq.block_table[:used]
        positions = last[None, :] + np.arange(ks[0])[:, None]           # [steps, sequences]
        columns = np.minimum(positions // bs, width - 1)   # past a sequence's own steps: never run
        slots = np.take_along_axis(tables.T, columns, axis=0) * bs + positions % bs
        on_device = {name: to_device(torch.from_numpy(array), device) for name, array in
                     (("positions", positions), ("slots", slots), ("tables", tables))}
        tokens = torch.tensor([seq.token_ids[-1] for seq in seqs], dtype=torch.long, device=device)
        proposed = []
        for i, m in enumerate(counts):
            hidden = self.runner.hidden_states(self._step(on_device, positions, i, m, tokens[:m]))
            tokens = self.runner.model.compute_logits(hidden).argmax(-1)
            proposed.append(tokens)
        flat = torch.cat(proposed).tolist()
        starts = np.cumsum([0] + counts)
        return [[flat[starts[i] + row] for i in range(k)] for row, k in enumerate(ks)]

    def _step(self, on_device: dict[str, torch.Tensor], positions: np.ndarray, i: int, m: int,
              tokens: torch.Tensor) -> StepBatch:
        """Draft step i of the first m sequences: one query row each."""
        index = dict(dtype=self.index_dtype, device=self.runner.device)
        context_host = (positions[i, :m] + 1).tolist()
        on_host = self.runner.device.type != "cuda"
        meta = AttentionMetadata(
            slot_mapping=on_device["slots"][i, :m].to(**index), block_tables=on_device["tables"][:m].to(**index),
            context_lens=on_device["positions"][i, :m].to(**index) + 1,
            query_start_loc=torch.arange(m + 1, **index), num_seqs=m, num_decodes=m, max_query_len=1,
            max_context_len=max(context_host), query_start_loc_host=list(range(m + 1)) if on_host else [],
            context_lens_host=context_host if on_host else [])
        return StepBatch(tokens, on_device["positions"][i, :m].long(), meta,
                         torch.arange(m, dtype=torch.long, device=self.runner.device))
