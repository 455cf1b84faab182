"""Triton token choice from logits by temperature alone, for a whole step in one launch: what the sampler's
temperature, NaN handling, softmax, cumulative sum and search cost in about ten passes over [rows, vocabulary]
(0.5 ms a step for 256 rows of a 152k vocabulary on an H200), read here at most twice. Its plain-torch reference,
the same choice up to float rounding, is sample_ref.sample_tokens_ref."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
BLOCK = 2048
# greedy_tokens' piece of a row a program: a 128k vocabulary is 32 programs a row, where one program a row
# (torch's argmax at one row) read 0.5 MB alone in ~28 us, 1% of an 8B model's decode step
GREEDY_CHUNK = 4096


@triton.jit
def _preferences(x):
    """NaN -> -inf, +inf -> the largest float32 (sample_ref.preferences)."""
    x = tl.where(x != x, -float("inf"), x)
    return tl.where(x == float("inf"), FLOAT32_MAX, x)


@triton.jit
def _first_best(base, n_cols, BLOCK: tl.constexpr):
    """The first index of the row's largest preference (0 when every one is -inf)."""
    cols = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], -float("inf"), tl.float32)
    best_at = tl.zeros([BLOCK], tl.int32)
    for start in tl.range(0, n_cols, BLOCK, num_stages=3):
        at = start + cols
        x = _preferences(tl.load(base + at, mask=at < n_cols, other=-float("inf")).to(tl.float32))
        better = x > best   # strictly: a lane keeps its first best
        best = tl.where(better, x, best)
        best_at = tl.where(better, at, best_at)
    return tl.min(tl.where(best == tl.max(best, 0), best_at, n_cols), 0)


@triton.jit
def _max_and_total(base, n_cols, temperature, BLOCK: tl.constexpr):
    """The row's largest scaled preference m and the sum of exp(scaled - m), in one online pass."""
    cols = tl.arange(0, BLOCK)
    lane_max = tl.full([BLOCK], -float("inf"), tl.float32)
    lane_sum = tl.zeros([BLOCK], tl.float32)
    for start in tl.range(0, n_cols, BLOCK, num_stages=3):
        at = start + cols
        x = tl.load(base + at, mask=at < n_cols, other=-float("inf")).to(tl.float32)
        x = _preferences(x / temperature)
        new_max = tl.maximum(lane_max, x)
        shift = tl.where(new_max > -float("inf"), new_max, 0.0)   # exp(-inf - -inf) would be NaN; exp(-inf) is 0
        lane_sum = lane_sum * tl.exp(lane_max - shift) + tl.exp(x - shift)
        lane_max = new_max
    row_max = tl.max(lane_max, 0)
    shift = tl.where(row_max > -float("inf"), row_max, 0.0)
    return row_max, tl.sum(lane_sum * tl.exp(lane_max - shift), 0)


@triton.jit
def _draw(base, n_cols, temperature, row_max, target, BLOCK: tl.constexpr):
    """The first index whose cumulative weight exp(scaled - row_max) exceeds target, walking the row only as far as
    that; the last index of positive weight if rounding leaves the target unreached."""
    cols = tl.arange(0, BLOCK)
    running = tl.zeros([], tl.float32)
    found = tl.full([], n_cols, tl.int32)
    last_positive = tl.zeros([], tl.int32)
    start = tl.zeros([], tl.int32)
    while (found == n_cols) & (start < n_cols):
        at = start + cols
        x = tl.load(base + at, mask=at < n_cols, other=-float("inf")).to(tl.float32)
        weight = tl.exp(_preferences(x / temperature) - row_max)
        cumulative = tl.cumsum(weight, 0) + running
        found = tl.min(tl.where(cumulative > target, at, n_cols), 0)
        last_positive = tl.maximum(last_positive, tl.max(tl.where(weight > 0, at, 0), 0))
        running += tl.sum(weight, 0)
        start += BLOCK
    return tl.where(found < n_cols, found, last_positive)


@triton.jit
def _sample_kernel(logits_ptr, temperature_ptr, uniform_ptr, out_ptr, n_cols, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    temperature = tl.load(temperature_ptr + row)
    if temperature == 0.0:
        chosen = _first_best(base, n_cols, BLOCK)
    else:
        row_max, total = _max_and_total(base, n_cols, temperature, BLOCK)
        chosen = tl.zeros([], tl.int32)   # no finite logit: the first token
        if row_max > -float("inf"):
            chosen = _draw(base, n_cols, temperature, row_max, tl.load(uniform_ptr + row) * total, BLOCK)
    tl.store(out_ptr + row, chosen.to(tl.int64))


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """logits [R, V] (rows contiguous), temperature [R] float32 (0 = greedy), uniforms [R] float32 in [0, 1) ->
    token ids [R] (long), as sample_ref.sample_tokens_ref chooses them."""
    rows, n_cols = logits.shape
    assert logits.stride(1) == 1 and temperature.shape == (rows,) and uniforms.shape == (rows,)
    out = torch.empty(rows, dtype=torch.long, device=logits.device)
    if rows:
        _sample_kernel[(rows,)](logits, temperature, uniforms, out, n_cols, logits.stride(0), BLOCK=BLOCK,
                                num_warps=8)
    return out


@triton.jit
def _chunk_best_kernel(logits_ptr, best_ptr, best_at_ptr, n_cols, stride, n_chunks, CHUNK: tl.constexpr):
    """The largest preference of piece pid(1) of row pid(0) and its first index."""
    row = tl.program_id(0).to(tl.int64)
    at = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    x = _preferences(tl.load(logits_ptr + row * stride + at, mask=at < n_cols, other=-float("inf")).to(tl.float32))
    best = tl.max(x, 0)
    tl.store(best_ptr + row * n_chunks + tl.program_id(1), best)
    tl.store(best_at_ptr + row * n_chunks + tl.program_id(1), tl.min(tl.where(x == best, at, n_cols), 0))


@triton.jit
def _row_best_kernel(best_ptr, best_at_ptr, out_ptr, n_cols, n_chunks, BLOCK_C: tl.constexpr):
    """The first index of the row's largest preference from its pieces' (0 when every one is -inf: piece 0's)."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    best = tl.load(best_ptr + row * n_chunks + c, mask=c < n_chunks, other=-float("inf"))
    best_at = tl.load(best_at_ptr + row * n_chunks + c, mask=c < n_chunks, other=n_cols)
    tl.store(out_ptr + row, tl.min(tl.where(best == tl.max(best, 0), best_at, n_cols), 0).to(tl.int64))


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """logits [R, V] (any float dtype, rows contiguous) -> the first index of each row's largest preference [R]
    (long): sample_ref.preferences(logits).argmax(-1), read by pieces of GREEDY_CHUNK columns in parallel."""
    rows, n_cols = logits.shape
    assert logits.stride(1) == 1
    n_chunks = triton.cdiv(n_cols, GREEDY_CHUNK)
    best = torch.empty((rows, n_chunks), dtype=torch.float32, device=logits.device)
    best_at = torch.empty((rows, n_chunks), dtype=torch.int32, device=logits.device)
    out = torch.empty(rows, dtype=torch.long, device=logits.device)
    if rows:
        _chunk_best_kernel[(rows, n_chunks)](logits, best, best_at, n_cols, logits.stride(0), n_chunks,
                                             CHUNK=GREEDY_CHUNK, num_warps=8)
        _row_best_kernel[(rows,)](best, best_at, out, n_cols, n_chunks, BLOCK_C=triton.next_power_of_2(n_chunks),
                                  num_warps=1)
    return out
