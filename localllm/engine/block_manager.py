"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts and the automatic prefix cache.

A full block is identified by a hash over its token ids chained to its parent block's hash, so equal hashes
mean equal whole prefixes. Blocks whose reference count drops to zero keep their contents and hash and
join the free list in least-recently-used order; a later sequence with the same prefix takes them back,
and allocation reuses the least recently freed block first.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from localllm.engine.request import Sequence


def block_hash(parent: bytes | None, token_ids: list[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    if parent is not None:
        h.update(parent)
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None     # set once the block is full and computed


@dataclass
class PrefixCacheStats:
    queries: int = 0    # prompt tokens looked up
    hits: int = 0       # of those, found in the cache

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # oldest first
        self.cached: dict[bytes, int] = {}   # hash -> block id
        self._num_cached_free = 0
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_cached_free_blocks(self) -> int:
        """Free blocks that still hold a cached prefix (counted as they move, since status reads it every step)."""
        return self._num_cached_free

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
            self._num_cached_free -= block.hash is not None
        block.ref_count += 1

    def _allocate_fresh(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        self._num_cached_free -= block.hash is not None
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]   # evicted: its old contents are about to be overwritten
        block.hash = None
        block.ref_count = 1
        return block_id

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks holding the longest cached prefix of a new sequence. At least one token is always left
        to compute, since the step that computes it yields the logits of the next token."""
        if not self.enable_prefix_caching:
            return []
        found, parent = [], None
        for i in range((len(seq) - 1) // self.block_size):
            h = block_hash(parent, seq.block_token_ids(i, self.block_size))
            block_id = self.cached.get(h)
            if block_id is None:
                break
            found.append(block_id)
            parent = h
        return found

    def free_blocks_after_taking(self, block_ids: list[int]) -> int:
        return len(self.free) - sum(1 for b in block_ids if self.blocks[b].ref_count == 0)

    def take_prefix(self, seq: Sequence, block_ids: list[int]) -> None:
        for block_id in block_ids:
            self._take(block_id)
        seq.block_table = list(block_ids)
        seq.num_hashed_blocks = len(block_ids)
        seq.num_cached_tokens = seq.num_computed_tokens = len(block_ids) * self.block_size
        if self.enable_prefix_caching:
            self.stats.queries += len(seq)
            self.stats.hits += seq.num_cached_tokens

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= len(self.free)

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grows the block table to hold num_tokens tokens."""
        for _ in range(self.blocks_needed(seq, num_tokens)):
            seq.block_table.append(self._allocate_fresh())

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Child shares the parent's full prompt blocks (one token is always left for the child to compute)."""
        shared = (parent.num_prompt_tokens - 1) // self.block_size
        for block_id in parent.block_table[:shared]:
            self._take(block_id)
            child.block_table.append(block_id)
        child.num_computed_tokens = shared * self.block_size
        child.num_hashed_blocks = shared if self.enable_prefix_caching else 0

    def cache_full_blocks(self, seq: Sequence) -> None:
        """After a step: register the blocks this step filled so later prompts can share them."""
        if not self.enable_prefix_caching:
            return
        # a token still in flight is computed but not yet known, so its block cannot be hashed yet
        num_full = min(seq.num_computed_tokens, len(seq.token_ids)) // self.block_size
        start = seq.num_hashed_blocks
        if num_full <= start:   # most decode steps fill no block
            return
        parent = self.blocks[seq.block_table[start - 1]].hash if start else None
        for i in range(start, num_full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash = block_hash(parent, seq.block_token_ids(i, self.block_size))
                self.cached.setdefault(block.hash, block.block_id)
            parent = block.hash
        seq.num_hashed_blocks = max(start, num_full)

    def _release(self, block_id: int, reused_first: bool = False) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free[block_id] = None
            self._num_cached_free += block.hash is not None
            if reused_first:
                self.free.move_to_end(block_id, last=False)

    def free_sequence(self, seq: Sequence) -> None:
        # tail blocks first, so that they are evicted before the prefix blocks other prompts share
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_computed_tokens = seq.num_hashed_blocks = 0

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Releases the blocks past those num_tokens tokens need (drafts a step wrote and then rejected); then
        registers the blocks its accepted tokens filled."""
        keep = -(-num_tokens // self.block_size)
        for block_id in reversed(seq.block_table[keep:]):
            self._release(block_id, reused_first=self.blocks[block_id].hash is None)   # nothing reusable in it
        del seq.block_table[keep:]
        self.cache_full_blocks(seq)
