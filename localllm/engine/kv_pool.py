"""How many KV blocks a GPU rank's pool gets: arithmetic over the config and the memory figures, torch-free.

Two ways to size it on a GPU:
- desktop (the default, gpu_memory_fraction None): what the configured sequences can use, max_num_seqs full
  contexts of max_model_len tokens, but at least DESKTOP_FLOOR_BYTES (and one full context) and at most
  DESKTOP_CARD_SHARE of the card, so a small model leaves the card to the rest of the desktop;
- server (gpu_memory_fraction F): all that is left of F of the card after the weights and a step's activations.
Both stay within what is left of SERVER_FRACTION of the card (resp. F), and below a few full contexts per sequence
slot (past that, more blocks only feed the prefix cache)."""
from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30
SERVER_FRACTION = 0.9        # the most of the card the desktop default lets the engine use in total
DESKTOP_CARD_SHARE = 0.25    # the desktop pool's cap, a share of the card's memory
DESKTOP_FLOOR_BYTES = 1 * GiB
CONTEXTS_PER_SLOT = 4        # full-length contexts per sequence slot, past which blocks only feed the prefix cache


@dataclass(frozen=True)
class PoolRequest:
    block_bytes: int           # one rank's bytes of one block
    blocks_per_context: int    # blocks of one max_model_len context
    max_num_seqs: int
    gpu_memory_fraction: float | None   # None = desktop sizing


def gpu_budget_bytes(request: PoolRequest, free_bytes: int, total_bytes: int, step_bytes: int) -> float:
    """Memory the pool may take: what is free, less a step's activations and the share of the card kept back."""
    fraction = request.gpu_memory_fraction or SERVER_FRACTION
    return free_bytes - step_bytes - (1 - fraction) * total_bytes


def pool_blocks(request: PoolRequest, budget_bytes: float, total_bytes: int | None) -> int:
    """Blocks of the pool within budget_bytes (0 when not even one fits). total_bytes: the card's memory, for the
    desktop cap; None (a CPU pool, sized from its own budget) takes the whole budget."""
    affordable = max(0, int(budget_bytes // request.block_bytes))
    most_useful = CONTEXTS_PER_SLOT * request.max_num_seqs * request.blocks_per_context
    if total_bytes is None or request.gpu_memory_fraction is not None:
        return min(affordable, most_useful)
    wanted = request.max_num_seqs * request.blocks_per_context
    cap = int(DESKTOP_CARD_SHARE * total_bytes // request.block_bytes)
    floor = max(request.blocks_per_context, DESKTOP_FLOOR_BYTES // request.block_bytes)
    return min(affordable, max(floor, min(wanted, cap)))
