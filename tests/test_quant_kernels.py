"""The quantized matmul kernels (localllm.kernels.quant_matmul: GEMV for up to 8 rows of x, dequantize-then-matmul
above) over the planes of quant_planes_ref, against quant_planes_ref.planes_matmul_ref and quant_blocks_ref
(dequantize the blocks, then matmul; bit-exact with gguf's dequantize, tests/test_quant_blocks.py), for every block
format, under Triton's interpreter (tests/triton_interpreter.py). Small shapes keep the interpreter fast; N is odd
and K not a multiple of the GEMV's step, so the masked edges run too, and on the CPU (one "SM") the GEMV
split K at these sizes."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
from triton_interpreter import collect_one_mode, run_under_interpreter  # noqa: E402

from localllm.kernels.block_formats import BLOCK_FORMATS, PLANES  # noqa: E402
from localllm.kernels.quant_blocks_ref import dequantize_ref, quant_matmul_ref  # noqa: E402
from localllm.kernels.quant_int_dots import dp4a, pack_x_groups  # noqa: E402
from localllm.kernels.quant_planes_ref import pack_planes, planes_matmul_ref  # noqa: E402
from localllm.kernels.quantize_ref import quantize_ref  # noqa: E402

FORMATS = list(BLOCK_FORMATS)
# relative to the largest output: float32 agrees to rounding; 16-bit inputs and outputs to their rounding
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
# the GEMV's x in 15-bit fixed point per group (fixed_x_ref) for every format but FP8
FIXED_X_TOLERANCE = 3e-4


def test_quant_kernels_under_triton_interpreter():
    run_under_interpreter(__file__)


def _case(fmt: str, m: int, n: int = 19, seed: int = 0, k: int | None = None):
    f = BLOCK_FORMATS[fmt]
    k = k or (3 * f.elems if f.elems == 32 else 2 * f.elems)
    g = torch.Generator().manual_seed(seed)
    raw = quantize_ref(torch.randn(n, k, generator=g), fmt)
    return torch.randn(m, k, generator=g), raw


def _check(got: torch.Tensor, x: torch.Tensor, raw: torch.Tensor, fmt: str, gemv: bool | None = None) -> None:
    """gemv: whether the GEMV computed got (by default: when x has few enough rows for it)."""
    from localllm.kernels.quant_matmul import GEMV_MAX_ROWS, _GEMV_MAX_ROWS_8BIT

    gemv_max = _GEMV_MAX_ROWS_8BIT if fmt in ("Q8_0", "fp8_e4m3_g128") else GEMV_MAX_ROWS
    want = quant_matmul_ref(x.float(), raw, fmt)
    assert torch.equal(planes_matmul_ref(x.float(), pack_planes(raw, fmt), fmt), want)
    assert got.dtype == x.dtype and got.shape == want.shape
    assert torch.isfinite(got.float()).all()
    tolerance = TOLERANCE[x.dtype]
    if (x.shape[0] <= gemv_max if gemv is None else gemv) and fmt != "fp8_e4m3_g128":
        tolerance = max(tolerance, FIXED_X_TOLERANCE)
    error = (got.float() - want).abs().max() / want.abs().max()
    assert error < tolerance, f"{fmt} {x.dtype} {tuple(x.shape)}: relative error {error:.2e}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m", [1, 3, 64, 257])
def test_matmul_float32(fmt, m):
    """Rows of x: 1 (the GEMV), 3 and 64 (the tensor-core kernel, quant_gemm), 257 (dequantize, then matmul)."""
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case(fmt, m, seed=m)
    _check(quant_matmul(x, pack_planes(raw, fmt), fmt), x, raw, fmt)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K", "Q8_0"])
def test_gemv_several_rows_and_dot_one_row(fmt):
    """Each path at the sizes another path takes by default: the GEMV at its most rows of x (two launches), the dot
    kernel at 1."""
    from localllm.kernels.quant_matmul import quant_matmul

    for m, path in ((4, "gemv"), (1, "dot")):
        x, raw = _case(fmt, m, seed=11)
        _check(quant_matmul(x, pack_planes(raw, fmt), fmt, path=path), x, raw, fmt, gemv=path == "gemv")


@pytest.mark.parametrize("fmt", FORMATS)
def test_gemv_and_dot_bfloat16_and_dense_path_float16(fmt):
    from localllm.kernels.quant_matmul import quant_matmul

    for m in (1, 3):
        x, raw = _case(fmt, m, seed=1)
        _check(quant_matmul(x.bfloat16(), pack_planes(raw, fmt), fmt), x.bfloat16(), raw, fmt)
    x, raw = _case(fmt, 260, seed=2)
    _check(quant_matmul(x.half(), pack_planes(raw, fmt), fmt), x.half(), raw, fmt)


@pytest.mark.parametrize("slice_units, row_programs, ahead, wide",
                         [(2, 1, 2, False), (8, 3, 1, True), (64, 2, 2, False), (64, 1, 1, True)])
def test_gemv_slices_of_k_and_row_programs_give_the_same(slice_units, row_programs, ahead, wide):
    """K in slices of 2, 8 and 64 units (16, 4 and 1 slices: the last ones' sums added up by the last to arrive;
    64 is more than the row's 32, so its loads are masked), row tiles walked by 1, 3 or 2 programs, read 1 or 2
    tiles ahead, offsets in 32 or 64 bits; the counters reset themselves, so a second call gives the same again."""
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case("Q4_K", 2, n=7, seed=3, k=1024)
    planes = pack_planes(raw, "Q4_K")
    tiles = dict(BLOCK_U=slice_units, BLOCK_N=2, ROW_PROGRAMS=row_programs, AHEAD=ahead, WIDE=wide)
    first = quant_matmul(x, planes, "Q4_K", tiles=tiles, path="gemv")
    _check(first, x, raw, "Q4_K", gemv=True)
    assert torch.equal(quant_matmul(x, planes, "Q4_K", tiles=tiles, path="gemv"), first)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K", "Q8_0", "int4_g128", "fp8_e4m3_g128"])
def test_gated_matmul_is_silu_and_mul_of_the_matmul(fmt):
    """gated (a merged [gate; up] weight): the GEMV stores silu(gate) * up itself, a tile's rows half gate, half
    up, at its tiles (1 row of x), over split K and 3 row programs, a last tile half past the 7 rows (2 rows of
    x); the other paths apply silu_and_mul after the matmul (3 rows: the 8-bit formats' dot kernel). Each is
    silu_and_mul of the path's own output, to the bit."""
    from localllm.kernels.activation import silu_and_mul
    from localllm.kernels.quant_matmul import quant_matmul

    for m, tiles in ((1, None), (2, dict(BLOCK_U=2, BLOCK_N=4, ROW_PROGRAMS=3)), (3, None)):
        x, raw = _case(fmt, m, n=14, seed=5)
        planes = pack_planes(raw, fmt)
        got = quant_matmul(x, planes, fmt, tiles=tiles, gated=True)
        assert got.shape == (m, 7)
        assert torch.equal(got, silu_and_mul(quant_matmul(x, planes, fmt, tiles=tiles)))


@pytest.mark.parametrize("first, second", [("Q4_K", "Q6_K"), ("int4_g128", "Q8_0")])
def test_two_parts_of_a_merged_projection_in_one_launch(monkeypatch, first, second):
    """merged_matmul: two parts in two formats (Q4_K_M's Q4_K q/k beside its Q6_K v) that both take the GEMV run
    in one launch a pair of rows of x (int4 with x packed apart), each with its own format's tiles and the same
    values as its own GEMV; at rows where one takes another path (3: the 8-bit formats' dot kernel), each runs
    apart."""
    from localllm.kernels import quant_matmul as qm

    launches = []
    pair = qm.quant_gemv_pair
    monkeypatch.setattr(qm, "quant_gemv_pair", lambda *args: launches.append(pair(*args)) or launches[-1])
    for m in (1, 2, 3):
        x, raw_first = _case(first, m, n=13, seed=6, k=512)
        raw_second = _case(second, m, n=6, seed=7, k=512)[1]
        planes = pack_planes(raw_first, first), pack_planes(raw_second, second)
        y = torch.empty(m, 19)
        qm.merged_matmul(x, [(planes[0], first, y[:, :13]), (planes[1], second, y[:, 13:])], {})
        assert torch.equal(y, torch.cat([qm.quant_matmul(x, planes[0], first),
                                         qm.quant_matmul(x, planes[1], second)], 1))
    paired_at_three = second != "Q8_0"
    assert launches == [True, True] + [True] * paired_at_three


@pytest.mark.parametrize("split", [1, 3])
def test_dot_split_k_and_row_tiles(split):
    """The dot kernel with K split over 1 and 3 programs and x's rows over two tiles of 16."""
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case("Q4_K", 20, n=7, seed=12, k=1024)
    tiles = dict(SPLIT=split, BLOCK_M=16)
    first = quant_matmul(x, pack_planes(raw, "Q4_K"), "Q4_K", tiles=tiles, path="dot")
    _check(first, x, raw, "Q4_K", gemv=False)
    assert torch.equal(quant_matmul(x, pack_planes(raw, "Q4_K"), "Q4_K", tiles=tiles, path="dot"), first)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K", "Q5_K", "Q8_0"])
def test_gpu_tile_sizes(monkeypatch, fmt):
    """The GPU's tiles (gemv_config's at one row of x and at several; the dequantize kernel's): K = 512 and 1,024
    cover whole and partial steps."""
    from localllm.kernels import quant_matmul as qm

    monkeypatch.setattr(qm, "GPU_TILES_EVERYWHERE", True)
    for m, k in ((1, 512), (8, 1024), (260, 512)):
        x, raw = _case(fmt, m, n=21, seed=4, k=k)
        _check(qm.quant_matmul(x, pack_planes(raw, fmt), fmt), x, raw, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_kernel_is_exact(fmt):
    """The dense path's weights are the reference's bit for bit (float32 out), from rows 5.. of the planes."""
    from localllm.kernels.quant_matmul import dequantize_rows

    _, raw = _case(fmt, 1, n=13, seed=5)
    out = torch.full((6, raw.shape[1] // BLOCK_FORMATS[fmt].nbytes * BLOCK_FORMATS[fmt].elems), float("nan"))
    dequantize_rows(pack_planes(raw, fmt), fmt, 5, 6, out)
    assert torch.equal(out, dequantize_ref(raw[5:11], fmt))


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K", "Q8_0"])
def test_embedding_rows_are_gathered_by_the_dequantize_kernel(fmt):
    """A quantized embedding kept as planes looks its rows up in one launch (GATHER: the rows an index names,
    repeated and out of order, in two dimensions), each the reference's row bit for bit; in bfloat16 within its
    rounding (Triton's interpreter truncates there: scripts/gpu_quant_check.py checks the GPU's rounding)."""
    from localllm.layers.quantized import BlockLayout

    _, raw = _case(fmt, 1, n=13, seed=6)
    k = raw.shape[1] // BLOCK_FORMATS[fmt].nbytes * BLOCK_FORMATS[fmt].elems
    layout = BlockLayout.of(13, k, [(0, 13, fmt)], packed=True)
    weight = torch.empty(layout.nbytes, dtype=torch.uint8)
    layout.write_rows(weight, layout.parts[0], 0, raw)
    index = torch.tensor([[12, 0, 5], [5, 7, 1]])
    want = dequantize_ref(raw, fmt)[index]
    assert torch.equal(layout.rows_of(weight, index, torch.float32), want)
    rounded = layout.rows_of(weight, index, torch.bfloat16)
    assert rounded.dtype == torch.bfloat16 and torch.allclose(rounded.float(), want, rtol=2 ** -7, atol=0)


def test_fp8_decodes_every_finite_code_exactly():
    """The kernels build float8 e4m3 values from their bits: every finite code (normal and subnormal, both signs)
    times its block's scale, as torch's float8_e4m3fn gives it; x = the identity reads the weight back, through
    the dense path (all of it) and the GEMV (rows of the identity)."""
    from localllm.kernels.quant_matmul import quant_matmul
    from localllm.kernels.quantize_ref import fp8_blocks

    codes = torch.arange(256, dtype=torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0          # 0x7f and 0xff are NaN
    values = codes.view(torch.float8_e4m3fn).reshape(2, 128)
    raw = fp8_blocks(values, torch.tensor([0.75, -3.0])).reshape(1, -1)
    want = dequantize_ref(raw, "fp8_e4m3_g128")
    assert torch.equal(want, (values.float() * torch.tensor([[0.75], [-3.0]])).reshape(1, -1))
    planes = pack_planes(raw, "fp8_e4m3_g128")
    assert torch.equal(quant_matmul(torch.eye(256), planes, "fp8_e4m3_g128").reshape(1, -1), want)
    for first in (0, 136):     # the GEMV decodes with the same code: 8 columns of each block
        got = quant_matmul(torch.eye(256)[first:first + 8], planes, "fp8_e4m3_g128")
        assert torch.equal(got[:, 0], want[0, first:first + 8])


def test_output_into_a_column_slice_and_empty_input():
    """A merged projection's part writes its columns of a wider output; a step with no rows computes nothing."""
    from localllm.kernels.quant_matmul import quant_matmul

    for m in (2, 9):
        x, raw = _case("Q4_1", m, n=7, seed=6)
        out = torch.full((m, 12), float("nan"))
        result = quant_matmul(x, pack_planes(raw, "Q4_1"), "Q4_1", out=out[:, 3:10])
        assert result.data_ptr() == out[:, 3:10].data_ptr()
        _check(out[:, 3:10], x, raw, "Q4_1")
        assert out[:, :3].isnan().all() and out[:, 10:].isnan().all()
    assert quant_matmul(x[:0], pack_planes(raw, "Q4_1"), "Q4_1").shape == (0, 7)


def test_three_dimensional_input():
    from localllm.kernels.quant_matmul import quant_matmul

    x, raw = _case("Q8_0", 6, seed=7)
    got = quant_matmul(x.reshape(2, 3, -1), pack_planes(raw, "Q8_0"), "Q8_0")
    assert got.shape == (2, 3, 19)
    _check(got.reshape(6, 19), x, raw, "Q8_0")


@pytest.mark.parametrize("rank", [0, 1])
def test_packed_layers_shard_and_compute_like_dense_ones(rank, monkeypatch):
    """Layers kept as planes (a GPU's storage) on tensor-parallel rank `rank` of 2: loaded from block rows (merged
    Q4_K q/k beside a Q6_K v: two parts; a row-parallel layer's whole blocks of columns), repacked a few rows at a
    time, they hold exactly the dense layers' weights, and their kernels give the dense outputs within rounding, at
    1 and 9 rows."""
    from localllm.layers import quantized
    from localllm.layers.linear import QKVParallelLinear, RowParallelLinear
    from localllm.layers.parallel import pretend_rank
    from localllm.layers.quantized import BlockSource, apply_weight, deferred_weights, place_weights

    monkeypatch.setattr(quantized, "PACK_WEIGHTS", 3 * 512)

    g = torch.Generator().manual_seed(8)
    fmts = {"q": "Q4_K", "k": "Q4_K", "v": "Q6_K", None: "Q5_K"}
    cases = [(QKVParallelLinear, (512, 64, 4, 2), {"q": (256, 512), "k": (128, 512), "v": (128, 512)}),
             (RowParallelLinear, (512, 48), {None: (48, 512)})]
    with pretend_rank(rank, 2):
        for cls, args, shards in cases:
            layers = []
            for packed in (True, None):
                with deferred_weights():
                    layer = cls(*args)
                spans = {"": [(*layer.shard_rows(s)[:2], fmts[s]) for s in shards]} if packed else {}
                place_weights(layer, spans, torch.device("cpu"), torch.float32, packed=packed)
                layers.append(layer)
            kept, dense = layers
            assert kept.layout.packed and kept.weight.dtype == torch.uint8
            for s, shape in shards.items():
                src = BlockSource.of_rows(quantize_ref(torch.randn(*shape, generator=g), fmts[s]), fmts[s])
                kept.load_weight(kept.weight, src, s)
                dense.load_weight(dense.weight, src.dequantized(), s)
            assert torch.equal(kept.layout.dequantize(kept.weight), dense.weight)
            for m in (1, 9):
                x = torch.randn(m, kept.layout.cols, generator=g)
                want = apply_weight(x, dense)
                error = (apply_weight(x, kept) - want).abs().max() / want.abs().max()
                tolerance = FIXED_X_TOLERANCE if m == 1 else 1e-5
                assert error < tolerance, f"{cls.__name__} rank {rank} m {m}: {error:.2e}"


def test_packed_gate_up_applies_silu_and_mul_itself():
    """A merged gate/up layer kept as planes, given the MLP's SiluAndMul (linear.gated_mlp does where no dense
    fused GEMV takes it): silu(gate) * up from its GEMV's store at 1 row of x, after its matmul at 9, as the dense
    layer's matmul then the activation, within the GEMV's rounding."""
    from localllm.kernels.activation_ref import silu_and_mul_ref
    from localllm.layers.activation import SiluAndMul
    from localllm.layers.linear import MergedColumnParallelLinear
    from localllm.layers.quantized import BlockSource, apply_weight, deferred_weights, place_weights

    g = torch.Generator().manual_seed(9)
    layers = []
    for packed in (True, None):
        with deferred_weights():
            layer = MergedColumnParallelLinear(256, [40, 40])
        spans = {"": [(0, 40, "Q4_K"), (40, 40, "Q4_K")]} if packed else {}
        place_weights(layer, spans, torch.device("cpu"), torch.float32, packed=packed)
        layers.append(layer)
    kept, dense = layers
    for shard in (0, 1):
        src = BlockSource.of_rows(quantize_ref(torch.randn(40, 256, generator=g), "Q4_K"), "Q4_K")
        kept.load_weight(kept.weight, src, shard)
        dense.load_weight(dense.weight, src.dequantized(), shard)
    for m in (1, 9):
        x = torch.randn(m, 256, generator=g)
        want = silu_and_mul_ref(apply_weight(x, dense))
        got = kept(x, act=SiluAndMul())
        assert got.shape == (m, 40)
        assert (got - want).abs().max() / want.abs().max() < (FIXED_X_TOLERANCE if m == 1 else 1e-5)


@pytest.mark.parametrize("group", [16, 32])
def test_fixed_point_x_is_the_reference_and_within_its_rounding(group):
    """pack_fixed_x gives fixed_x_ref's words exactly (a group of zeros included, bf16 and float32 x), and
    the x they stand for is within half a step (max|x| / 32766) of x."""
    from localllm.kernels.fixed_x_ref import X_LEVELS, fixed_x_ref, fixed_x_values
    from localllm.kernels.quant_int_dots import pack_fixed_x

    g = torch.Generator().manual_seed(13)
    x = torch.randn(3, 9 * group, generator=g) * torch.logspace(-3, 3, 9 * group)
    x[1, group:2 * group] = 0
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        words, scale, sums = pack_fixed_x(xd, group)
        want_words, want_scale, want_sums = fixed_x_ref(xd, group)
        assert torch.equal(words.view(want_words.shape), want_words)
        assert torch.allclose(scale, want_scale, rtol=1e-6, atol=0)
        magnitude = xd.float().abs().reshape(3, -1, group).sum(-1)      # the sums' rounding depends on their order
        assert ((sums - want_sums).abs() <= magnitude * 1e-6).all()
    assert (scale[1, 1] == 0) and (words.view(want_words.shape)[1, 1] == 0).all()
    words, scale, _ = fixed_x_ref(x, group)
    step = x.reshape(3, -1, group).abs().amax(-1, keepdim=True) / X_LEVELS
    error = (fixed_x_values(words, scale, group).reshape(3, -1, group) - x.reshape(3, -1, group)).abs()
    assert (error <= step * 0.5001).all()


@triton.jit
def _pack_x_groups_kernel(x_ptr, words_ptr, scale_ptr, sum_ptr, BITS: tl.constexpr, G: tl.constexpr,
                          UNIT: tl.constexpr, GROUPS: tl.constexpr):
    units = tl.arange(0, GROUPS)
    high0, low0, high1, low1, scale, sums = pack_x_groups(x_ptr, units, units < GROUPS, BITS, G, UNIT)
    C: tl.constexpr = G // 4 // (2 if BITS == 4 else 1)
    out = words_ptr + units[:, None] * (G // 2) + tl.arange(0, UNIT)[None, :]     # fixed_x_ref's word order
    tl.store(out, high0)
    tl.store(out + G // 4, low0)
    if BITS == 4:
        tl.store(out + C, high1)
        tl.store(out + G // 4 + C, low1)
    tl.store(scale_ptr + units, scale)
    tl.store(sum_ptr + units, sums)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K", "Q8_0"])
def test_gemv_packs_x_itself_as_the_reference(fmt):
    """Where a GEMV unit is a whole group, the GEMV packs x in its own threads (pack_x_groups): the words are
    fixed_x_ref's exactly, for the 4-bit layout (two halves of a group's words) and the 8-bit one."""
    from localllm.kernels.fixed_x_ref import fixed_x_ref
    from localllm.kernels.quant_launch import gemv_unit_words

    group, bits = BLOCK_FORMATS[fmt].group, PLANES[fmt][0].bits
    g = torch.Generator().manual_seed(15)
    x = (torch.randn(1, 8 * group, generator=g) * torch.logspace(-3, 3, 8 * group)).to(torch.bfloat16)
    x[0, group:2 * group] = 0
    words = torch.empty(8 * group // 2, dtype=torch.int32)
    scale, sums = torch.empty(8), torch.empty(8)
    _pack_x_groups_kernel[(1,)](x, words, scale, sums, BITS=bits, G=group, UNIT=gemv_unit_words(fmt), GROUPS=8)
    want_words, want_scale, want_sums = fixed_x_ref(x, group)
    assert torch.equal(words.view(want_words.shape), want_words)
    assert torch.equal(scale, want_scale[0])
    assert ((sums - want_sums[0]).abs() <= x.float().abs().reshape(8, group).sum(-1) * 1e-6).all()


@triton.jit
def _dp4a_kernel(a_ptr, b_ptr, c_ptr, out_ptr):
    i = tl.arange(0, 8)
    tl.store(out_ptr + i, dp4a(tl.load(a_ptr + i), tl.load(b_ptr + i), tl.load(c_ptr + i), False))


def test_dp4a_multiplies_signed_bytes():
    """The GEMV's dp4a as Triton's interpreter runs it: four products of signed bytes added to acc."""
    g = torch.Generator().manual_seed(14)
    a, b = (torch.randint(-2**31, 2**31 - 1, (8,), generator=g, dtype=torch.int64).to(torch.int32) for _ in "ab")
    c = torch.randint(-1000, 1000, (8,), generator=g, dtype=torch.int32)
    out = torch.empty(8, dtype=torch.int32)
    _dp4a_kernel[(1,)](a, b, c, out)
    want = (a.view(torch.int8).reshape(8, 4).int() * b.view(torch.int8).reshape(8, 4).int()).sum(1) + c
    assert torch.equal(out, want)


collect_one_mode(globals(), "test_quant_kernels_under_triton_interpreter")
