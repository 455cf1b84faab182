"""The split all-reduce of one-token tensor-parallel steps (kernels/peer_sum.py) under Triton's interpreter: ranks
simulated in one process, each with its own exchange buffer, the row-parallel GEMV of every rank pushing its partial
sum into every rank's buffer, then every rank's RMSNorm pulling the sum. The residual streams must agree on every
rank and equal the unsplit projection's; each program's flags must count the steps."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402

from localllm.kernels.gemv_ref import gemv_ref  # noqa: E402
from localllm.kernels.rmsnorm_ref import rms_norm_ref  # noqa: E402
from localllm.layers.peer_exchange import buffer_words, flag_words, make_sites  # noqa: E402


def test_peer_sum_kernels_under_triton_interpreter():
    run_under_interpreter(__file__)


def _rank_buffers(widths: list[int], world: int):
    """Each simulated rank's buffer, and its sites, reaching the other ranks' buffers by word offsets as the
    symmetric-memory mappings do."""
    buffers = [torch.zeros(buffer_words(widths, world)) for _ in range(world)]
    sites = []
    for rank, own in enumerate(buffers):
        deltas = torch.tensor([(b.data_ptr() - own.data_ptr()) // 4 for b in buffers], dtype=torch.int64)
        sites.append(make_sites(own, widths, rank, deltas, torch.zeros(1, dtype=torch.int32)))
    return buffers, sites


def _split_step(x, weight, residual, norm_weight, sites, *, silu_mul=False):
    """One row-parallel projection over the ranks' input shards, added to residual, then the next RMSNorm: every
    rank pushes, then every rank pulls (the order the GPUs' kernels may finish in is any; here all pushes land
    first). Returns each rank's (normed, residual)."""
    from localllm.kernels.gemv import gemv
    from localllm.kernels.rmsnorm import pulled_rms_norm

    world = len(sites)
    k = weight.shape[1] // world
    streams = [residual.clone() for _ in range(world)]
    pushed = []
    for rank in range(world):
        cols = slice(rank * k, (rank + 1) * k)
        x_part = torch.cat([x[:, cols], x[:, x.shape[1] // 2:][:, cols]], 1) if silu_mul else x[:, cols]
        pushed.append(gemv(x_part.contiguous(), weight[:, cols].contiguous(), silu_mul=silu_mul,
                           residual=streams[rank] if rank == 0 else None, push=sites[rank]))
    return [pulled_rms_norm(sites[rank], pushed[rank], norm_weight, 1e-6, streams[rank]) for rank in range(world)]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("silu_mul", [False, True])
def test_ranks_agree_on_the_summed_residual_and_its_norm(world, silu_mul):
    g = torch.Generator().manual_seed(world)
    n, k = 40, 24 * world
    x = torch.randn(1, 2 * k if silu_mul else k, generator=g)
    weight = torch.randn(n, k, generator=g) / k ** 0.5
    residual = torch.randn(1, n, generator=g)
    norm_weight = torch.rand(n, generator=g) + 0.5
    _, sites = _rank_buffers([n, n], world)
    results = _split_step(x, weight, residual, norm_weight, [s[0] for s in sites], silu_mul=silu_mul)
    want_residual = gemv_ref(x, weight, silu_mul=silu_mul, residual=residual)
    want_normed = rms_norm_ref(want_residual, norm_weight, 1e-6)
    for normed, stream in results:
        torch.testing.assert_close(stream, want_residual, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(normed, want_normed, atol=1e-5, rtol=1e-5)
        assert torch.equal(stream, results[0][1]) and torch.equal(normed, results[0][0])


def test_flags_count_the_steps_of_each_program():
    """Each program's flag of a site, on every rank, holds how many times the site's projection ran; the flags past
    the grid stay 0."""
    from localllm.kernels.gemv import gemv_config

    world, n, k = 2, 48, 32
    g = torch.Generator().manual_seed(7)
    buffers, sites = _rank_buffers([n, n], world)
    weight = torch.randn(n, k * world, generator=g)
    norm_weight = torch.ones(n)
    residual = torch.zeros(1, n)
    grid = -(-n // gemv_config(1, n, k)[1])
    assert 1 < grid < n
    for step in (1, 2, 3):
        for site in (0, 1):
            x = torch.randn(1, k * world, generator=g)
            _split_step(x, weight, residual, norm_weight, [s[site] for s in sites])
            for rank in range(world):
                start = site * (flag_words(n, world) + world * n)
                flags = buffers[rank].view(torch.int32)[start:start + world * n].view(world, n)
                assert torch.equal(flags[:, :grid], torch.full((world, grid), step, dtype=torch.int32))
                assert not flags[:, grid:].any()


def test_a_wait_holds_until_every_program_of_the_peer_has_signalled():
    """The peer's last program has not signalled yet: the norm (on a thread of its own) keeps waiting, and sums at
    once when that flag arrives."""
    import threading

    from localllm.kernels.gemv import gemv
    from localllm.kernels.rmsnorm import pulled_rms_norm

    n, k = 16, 8
    _, sites = _rank_buffers([n, n], 2)
    pushed = [gemv(torch.randn(1, k), torch.randn(n, k), residual=torch.zeros(1, n) if rank == 0 else None,
                   push=sites[rank][0]) for rank in range(2)]
    site = sites[0][0]
    peer_flags = site.flags.view(2, n)[1]
    last = pushed[1] - 1
    assert pushed[0] == pushed[1] > 1 and peer_flags[:last + 1].tolist() == [1] * pushed[1]
    peer_flags[last] = 0   # the peer's last program has not arrived
    stream = torch.zeros(1, n)
    waiting = threading.Thread(target=pulled_rms_norm, args=(site, pushed[0], torch.ones(n), 1e-6, stream))
    waiting.start()
    waiting.join(1.0)
    assert waiting.is_alive() and not stream.any()
    peer_flags[last] = 1
    waiting.join(30.0)
    assert not waiting.is_alive()
    assert torch.equal(stream[0], site.slots[:n] + site.slots[n:])


def test_an_abandoned_wait_returns_without_the_peer():
    """A rank whose peer died (it never pushes) is released by the abandon word instead of waiting forever."""
    from localllm.kernels.gemv import gemv
    from localllm.kernels.rmsnorm import pulled_rms_norm

    n, k = 16, 8
    _, sites = _rank_buffers([n, n], 2)
    site = sites[0][0]
    pushed = gemv(torch.randn(1, k), torch.randn(n, k), residual=torch.zeros(1, n), push=site)
    site.abandon.fill_(1)
    normed, _ = pulled_rms_norm(site, pushed, torch.ones(n), 1e-6, torch.zeros(1, n))
    assert normed.shape == (1, n)


def test_half_precision_sum_is_rounded_once():
    """The partial sums travel in float32 and the residual is rounded once, after the ranks' sum: in half precision
    the split result is the float32 sum of rank 0's rounded partial plus residual and rank 1's rounded partial (each
    rank's partial as the unsplit GEMV rounds it). float16, since the interpreter rounds bfloat16 toward zero."""
    from localllm.kernels.gemv import gemv

    world, n, k = 2, 32, 64
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, k * world, generator=g).half()
    weight = (torch.randn(n, k * world, generator=g) / 8).half()
    residual = torch.randn(1, n, generator=g).half()
    _, sites = _rank_buffers([n, n], world)
    (_, stream), _ = _split_step(x, weight, residual, torch.ones(n).half(), [s[0] for s in sites])
    parts = [gemv(x[:, r * k:(r + 1) * k].contiguous(), weight[:, r * k:(r + 1) * k].contiguous()).float()
             for r in range(world)]
    want = ((parts[0] + residual.float()) + parts[1]).half()
    assert torch.equal(stream, want)
    rounded_twice = ((parts[0] + residual.float()).half().float() + parts[1]).half()
    assert not torch.equal(stream, rounded_twice)   # the case tells the two apart


collect_one_mode(globals(), "test_peer_sum_kernels_under_triton_interpreter")
