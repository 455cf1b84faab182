"""Triton GEMV for steps of a few tokens, y = prologue(x) @ W^T (+ bias) (+ residual), with a decoder layer's small
neighbours fused in so that a decode step launches fewer kernels:
  - prologue RMS_NORM: x is RMS-normalised with a weight first (the norm before qkv and gate/up);
  - prologue SILU_MUL: x is [M, 2K] and silu(first half) * second half is the input (the SwiGLU before down);
  - epilogue residual: the output is residual + y, rounded as the unfused add rounds (after o_proj and down);
  - epilogue push (tensor parallelism, one row): the partial sum goes to this rank's slot on every rank instead,
    in float32, for the RMSNorm after it to add up (kernels/peer_sum.py).

At batch 1 a small model's step is bound by its launches, not by its weights: each of RMSNorm, SiLU-and-mul and
a residual add costs a launch of a few microseconds whatever its size. The weight is read once in [BLOCK_N,
BLOCK_K] tiles; products are accumulated element-wise in float32 and reduced once after the K loop. The plain-torch
reference (the same arithmetic in separate ops) is gemv_ref.gemv_ref.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from localllm.kernels.pdl import pdl_options, wait_for_previous_kernel
from localllm.kernels.peer_sum import PeerSite, next_flag, push_rows, signal_peers
from localllm.kernels.rounding import rounded

PROLOGUE_NONE, PROLOGUE_RMS_NORM, PROLOGUE_SILU_MUL = 0, 1, 2
GEMV_MAX_ROWS = 8           # above this the tile of products no longer fits the registers: cuBLAS takes over
WIDE_ROWS = 4096            # from this many output rows, some one-row launches take other tiles (gemv_config)
_PRODUCTS_PER_PROGRAM = 8192   # float32 accumulators of one program (64 registers a thread at 4 warps)


@triton.jit
def _input_tile(x_ptr, norm_ptr, ms, kk, m_ok, k_ok, stride_xm, K, inv, PROLOGUE: tl.constexpr):
    """The [BLOCK_M, BLOCK_K] tile of the matmul's input, in the weight's dtype, as the unfused ops round it."""
    mask = m_ok[:, None] & k_ok[None, :]
    ptrs = x_ptr + ms[:, None] * stride_xm + kk[None, :]
    if PROLOGUE == 2:
        gate = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(ptrs + K, mask=mask, other=0.0).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        return rounded(rounded(gate / (1.0 + tl.exp(-gate)), dtype) * up, dtype).to(dtype)   # as F.silu(g) * up
    x = tl.load(ptrs, mask=mask, other=0.0)
    if PROLOGUE == 1:
        nw = tl.load(norm_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
        x = ((x.to(tl.float32) * inv[:, None]).to(x.dtype).to(tl.float32) * nw[None, :]).to(x.dtype)
    return x


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, norm_ptr, bias_ptr, res_ptr, M, N, K,
                 stride_xm, stride_wn, stride_ym, stride_rm, eps,
                 flags_ptr, deltas_ptr,
                 PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr,
                 PUSH: tl.constexpr = False, RANK: tl.constexpr = 0, WORLD: tl.constexpr = 1,
                 ON_GPU: tl.constexpr = True):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ms = tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    m_ok = ms < M
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride_wn + ks[None, :]
    # The weights are no kernel's output, so their first tile is read before waiting for the kernel before this
    # one (launched as its programmatic dependent, this kernel starts while that one finishes).
    w_first = tl.load(w_ptrs, mask=row_ok[:, None] & (ks < K)[None, :], other=0.0)
    if PUSH:
        flag = next_flag(flags_ptr, N, RANK)
    wait_for_previous_kernel(USE_PDL)
    inv = tl.full([BLOCK_M], 1.0, tl.float32)
    if PROLOGUE == 1:   # every program sums the squares of the (few, short) input rows itself
        squares = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + ks
            xv = tl.load(x_ptr + ms[:, None] * stride_xm + kk[None, :], mask=m_ok[:, None] & (kk < K)[None, :],
                         other=0.0).to(tl.float32)
            squares += xv * xv
        inv = tl.rsqrt(tl.sum(squares, 1) / K + eps)
    x = _input_tile(x_ptr, norm_ptr, ms, ks, m_ok, ks < K, stride_xm, K, inv, PROLOGUE)
    products = x.to(tl.float32)[:, None, :] * w_first.to(tl.float32)[None, :, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < K
        x = _input_tile(x_ptr, norm_ptr, ms, kk, m_ok, k_ok, stride_xm, K, inv, PROLOGUE)
        w = tl.load(w_ptrs + k0, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        products += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    acc = tl.sum(products, 2)
    if HAS_BIAS:   # added before the one rounding, as a matmul's epilogue adds it
        acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    y = acc.to(res_ptr.dtype.element_ty)
    y_mask = m_ok[:, None] & row_ok[None, :]
    if PUSH:   # y_ptr: the site's first slot (one row); rank 0's residual is added once, unrounded
        part = y.to(tl.float32)
        if HAS_RESIDUAL:
            part += tl.load(res_ptr + ms[:, None] * stride_rm + rows[None, :], mask=y_mask, other=0.0).to(tl.float32)
        push_rows(y_ptr, deltas_ptr, rows[None, :], part, y_mask, RANK, WORLD, N)
        signal_peers(flags_ptr, deltas_ptr, flag, N, RANK, WORLD, ON_GPU)
    else:
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + ms[:, None] * stride_rm + rows[None, :], mask=y_mask, other=0.0)
            y = (y.to(tl.float32) + r.to(tl.float32)).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + ms[:, None] * stride_ym + rows[None, :], y, mask=y_mask)


def gemv_config(m: int, n: int, k: int, prologue: int = PROLOGUE_NONE) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K). Swept at one row on an H200 (scripts/gpu_gemv_check.py): 4 rows a tile was best
    or within 5% of it from Qwen3-0.6B's qkv to Llama-3.1-8B's gate/up, 8 rows past ~8k rows. Steps of 1,024 columns
    (twice the loads in flight of 512) made Llama-3.1-8B's whole decode step 1.3% faster, where matrices alone had
    not told them apart. BLOCK_K shrinks with more token rows so that their products stay in registers.
    At one row and WIDE_ROWS rows or more, timed in one TP=2 rank's share of Llama-3.1-8B's whole step (narrower
    matrices, Qwen3-0.6B's and Llama-3.2-1B's, lost up to 8% and 11% with these):
      - SiLU-and-mul (an exp and two loads a column, done by every program): 8 rows a tile share it and 512
        columns a step keep its registers; down (4,096 x 7,168) decoded 380 tok/s against 368 with 4 x 1,024;
      - no prologue over at most 2,048 columns: 4 steps of 512 instead of 2 of 1,024; o (4,096 x 2,048) 382.4
        against 378.3."""
    block_m = triton.next_power_of_2(m)
    if block_m == 1 and n >= WIDE_ROWS:
        if prologue == PROLOGUE_SILU_MUL:
            return 1, 8, min(512, triton.next_power_of_2(k))
        if prologue == PROLOGUE_NONE and k <= 2048:
            return 1, 4, min(512, triton.next_power_of_2(k))
    block_n = 8 if n >= 8192 and block_m == 1 else 4
    block_k = min(1024, triton.next_power_of_2(k), max(32, _PRODUCTS_PER_PROGRAM // (block_m * block_n)))
    return block_m, block_n, block_k


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         norm: tuple[torch.Tensor, float] | None = None, silu_mul: bool = False,
         residual: torch.Tensor | None = None, out: torch.Tensor | None = None, push: PeerSite | None = None,
         config: tuple[int, int, int] | None = None, num_warps: int = 4) -> torch.Tensor | int:
    """x [M, K] (or [M, 2K] with silu_mul), weight [N, K] -> [M, N]. norm: (weight [K], eps) of an RMSNorm applied
    to x first. residual [M, N]: added to the result. out: where to write (may be residual itself). push: one row's
    partial sum sent to this rank's slot of that site on every rank instead (returns how many programs signal the
    site, which the norm that pulls the sum waits for)."""
    m, n, k = x.shape[0], weight.shape[0], weight.shape[1]
    assert 0 < m <= GEMV_MAX_ROWS and not (norm is not None and silu_mul)
    assert x.shape[1] == (2 * k if silu_mul else k) and x.stride(-1) == 1 and weight.stride(-1) == 1
    if push is not None:
        assert m == 1 and push.width == n
        out = push.slots
    elif out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    prologue = PROLOGUE_SILU_MUL if silu_mul else PROLOGUE_RMS_NORM if norm is not None else PROLOGUE_NONE
    block_m, block_n, block_k = config or gemv_config(m, n, k, prologue)
    programs = triton.cdiv(n, block_n)
    _gemv_kernel[(programs,)](
        x, weight, out, norm[0] if norm is not None else x, bias if bias is not None else x,
        residual if residual is not None else x, m, n, k,
        x.stride(0), weight.stride(0), out.stride(0), residual.stride(0) if residual is not None else 0,
        float(norm[1]) if norm is not None else 0.0,
        *(push.signal_args() if push is not None else (x, x)),
        PROLOGUE=prologue, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, **pdl_options(x.device),
        **(push.constants() if push is not None else {}))
    return programs if push is not None else out
