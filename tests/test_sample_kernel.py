"""The step's token choice in one Triton launch (localllm.kernels.sample) against its plain-torch reference, under
Triton's interpreter (tests/triton_interpreter.py); and the reference against the engine's sampler, so that the
kernel chooses what the sampler would."""
from __future__ import annotations

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402

from localllm.kernels.sample_ref import sample_tokens_ref  # noqa: E402


def test_sample_kernel_under_triton_interpreter():
    """Runs the kernel tests of this file in a child process where Triton interprets."""
    run_under_interpreter(__file__)


def _case(rows: int, vocab: int, seed: int, dtype=torch.float32):
    """Random logits with the edge cases in fixed rows: NaN and +inf entries, a row with nothing finite, a row
    whose only finite logit is the last, greedy rows; uniforms from 0 to just under 1."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    logits[1, ::7] = math.nan
    logits[2, [5, vocab - 3]] = math.inf
    logits[3] = -math.inf
    logits[4, :-1] = -math.inf
    temperature = torch.rand(rows, generator=g) * 1.5 + 0.05
    temperature[[0, 5]] = 0.0
    uniforms = torch.rand(rows, generator=g)
    uniforms[6], uniforms[7] = 0.0, 1 - 2 ** -24
    return logits, temperature, uniforms


@pytest.mark.parametrize("vocab", [37, 2048, 5000])
def test_sampled_tokens_match_the_reference(vocab):
    from localllm.kernels.sample import sample_tokens

    for seed in range(3):
        logits, temperature, uniforms = _case(12, vocab, seed)
        expected = sample_tokens_ref(logits, temperature, uniforms)
        chosen = sample_tokens(logits, temperature, uniforms)
        # row 7's uniform is within float rounding of 1: the sums' order decides among the last tokens
        assert torch.equal(chosen[:7], expected[:7]) and torch.equal(chosen[8:], expected[8:])
        assert logits[7, chosen[7]] > -math.inf and chosen[7] >= expected[7] - 3
        assert expected[3] == 0 and expected[4] == vocab - 1 and expected[2] in (5, vocab - 3)
        assert not torch.isnan(logits[1, expected[1]])


def test_bfloat16_logits_are_read_as_they_are():
    from localllm.kernels.sample import sample_tokens

    logits, temperature, uniforms = _case(10, 3000, 5, torch.bfloat16)
    assert torch.equal(sample_tokens(logits, temperature, uniforms), sample_tokens_ref(logits, temperature, uniforms))


def test_each_draw_is_the_inverse_cdf_of_its_uniform():
    """Over a grid of uniforms, every token is drawn for a share of them equal to its probability."""
    from localllm.kernels.sample import sample_tokens

    logits = torch.tensor([[0.0, math.log(3.0), -math.inf, math.log(4.0)]])
    uniforms = (torch.arange(800) + 0.5) / 800
    drawn = sample_tokens(logits.expand(800, 4).contiguous(), torch.ones(800), uniforms)
    assert torch.bincount(drawn, minlength=4).tolist() == [100, 300, 0, 400]


@pytest.mark.parametrize("vocab, dtype", [(37, torch.float32), (4096, torch.float32), (9001, torch.bfloat16)])
def test_greedy_tokens_by_pieces_are_the_first_best(vocab, dtype):
    """Greedy by pieces of GREEDY_CHUNK columns: NaN never chosen, +inf chosen first, a row with nothing finite
    gives 0, and a tie between pieces goes to the first piece (a tie inside one, to its first column)."""
    from localllm.kernels import sample

    logits, _, _ = _case(12, vocab, 7, dtype)
    last = vocab - 1
    logits[5, [last, last // 2, 3]] = 50.0              # a tie across pieces (one piece when vocab is small)
    logits[6, [last, last - 1]] = 60.0                  # a tie inside the last piece
    got = sample.greedy_tokens(logits)
    assert torch.equal(got, sample_tokens_ref(logits, torch.zeros(12), torch.zeros(12)))
    assert got[3] == 0 and got[4] == last and got[5] == 3 and got[6] == last - 1 and got[2] in (5, vocab - 3)
    assert torch.equal(sample.greedy_tokens(logits[:, :vocab // 2 + 1]),
                       logits[:, :vocab // 2 + 1].float().nan_to_num(nan=-math.inf).argmax(-1))


collect_one_mode(globals(), "test_sample_kernel_under_triton_interpreter")
