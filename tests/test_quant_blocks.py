"""Quantized weight blocks on the CPU: the torch dequantizers against the gguf package bit for bit, the
quantizers, a GGUF converted with its blocks kept, and the layers that store and shard them."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open

from localllm.errors import UnsupportedModelError
from localllm.kernels.block_formats import BLOCK_FORMATS
from localllm.kernels.quant_blocks_ref import dequantize_ref, quant_matmul_ref
from localllm.kernels.quantize_ref import quantize_ref
from localllm.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear,
                                    RowParallelLinear)
from localllm.layers.parallel import pretend_rank
from localllm.layers.quantized import BlockSource, apply_weight, deferred_weights, place_weights
from localllm.loader.gguf import convert_gguf
from tiny_models import write_quantized_gguf

GGUF_TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as float32 bit patterns, NaN payloads aside."""
    return bool(((a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("fmt", GGUF_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dequantize_matches_gguf_on_random_bytes(fmt, seed):
    """Random bytes exercise every bit of the scale and min packing (and NaN/inf half-floats)."""
    f = BLOCK_FORMATS[fmt]
    raw = np.random.default_rng(seed).integers(0, 256, size=(5, 4 * f.nbytes), dtype=np.uint8)
    with np.errstate(all="ignore"):
        want = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[fmt])))
    got = dequantize_ref(torch.from_numpy(raw), fmt)
    assert got.shape == want.shape == (5, 4 * f.elems)
    assert _same_bits(got, want)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q8_0"])
def test_quantizers_match_gguf(fmt):
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(3))
    w[0, :32] = 0.0            # an all-zero block: scale 0
    w[1, :32] = 0.25           # a constant block
    want = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[fmt])
    assert np.array_equal(quantize_ref(w, fmt).numpy(), want)


@pytest.mark.parametrize("fmt,worst", [("Q4_K", 0.1), ("Q5_K", 0.05), ("Q6_K", 0.03), ("int4_g128", 0.12),
                                       ("Q8_0", 0.01), ("fp8_e4m3_g128", 0.04)])
def test_quantize_then_dequantize_is_close(fmt, worst):
    w = torch.randn(6, 512, generator=torch.Generator().manual_seed(4))
    raw = quantize_ref(w, fmt)
    assert raw.dtype == torch.uint8 and raw.shape == (6, 512 // BLOCK_FORMATS[fmt].elems * BLOCK_FORMATS[fmt].nbytes)
    back = dequantize_ref(raw, fmt)
    assert (back - w).norm() / w.norm() < worst
    if fmt in GGUF_TYPES:   # the gguf package decodes our K-quant blocks to the same values
        decoded = gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[fmt])
        assert _same_bits(back, torch.from_numpy(np.ascontiguousarray(decoded)))


def test_int4_blocks_decode_as_defined():
    """int4_g128: f16 scale, u8 zero, pad, then byte i holding weights i (low nibble) and i + 64 (high)."""
    g = torch.Generator().manual_seed(5)
    q = torch.randint(0, 16, (3, 128), generator=g)
    zero = torch.tensor([0, 7, 16])
    scale = torch.tensor([0.5, -0.125, 3.0], dtype=torch.float16)
    packed = (q[:, :64] | (q[:, 64:] << 4)).to(torch.uint8)
    raw = torch.cat((scale.view(torch.uint8).reshape(3, 2), zero.to(torch.uint8)[:, None],
                     torch.zeros(3, 1, dtype=torch.uint8), packed), dim=1)
    want = (q - zero[:, None]).float() * scale.float()[:, None]
    assert torch.equal(dequantize_ref(raw, "int4_g128"), want)


def test_quant_matmul_reference_is_dequantize_then_matmul():
    w = torch.randn(5, 64, generator=torch.Generator().manual_seed(6))
    raw = quantize_ref(w, "Q8_0")
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(quant_matmul_ref(x, raw, "Q8_0"), x @ dequantize_ref(raw, "Q8_0").T)


# --- GGUF converted with its blocks kept ---------------------------------------------------------------------------

def _mixed_formats(name: str) -> str:
    """Q4_K_M-like: attn_v and ffn_down in Q6_K, the embedding in Q8_0, attn_q in Q4_0, the rest Q4_K."""
    for part, fmt in (("attn_v", "Q6_K"), ("ffn_down", "Q6_K"), ("token_embd", "Q8_0"), ("attn_q", "Q4_0")):
        if part in name:
            return fmt
    return "Q4_K"


@pytest.fixture(scope="module")
def mixed_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    path = write_quantized_gguf(root / "mixed.gguf", _mixed_formats)
    convert_gguf(path, root / "dense")
    convert_gguf(path, root / "blocks", keep_blocks=True)
    return root


def test_blocks_conversion_keeps_raw_rows_that_dequantize_to_the_dense_conversion(mixed_gguf):
    dense_file, blocks_file = mixed_gguf / "dense" / "model.safetensors", mixed_gguf / "blocks" / "model.safetensors"
    with safe_open(str(blocks_file), "pt") as blocks, safe_open(str(dense_file), "pt") as dense:
        metadata = blocks.metadata()
        formats = json.loads(metadata["block_formats"])
        assert metadata["quantization"] == "Q4_K_M" and dense.metadata()["quantization"] == "Q4_K_M"
        assert "block_formats" not in dense.metadata()
        assert formats["model.layers.0.self_attn.q_proj.weight"] == "Q4_0"   # row-permuted (llama) and kept
        assert formats["model.layers.1.mlp.down_proj.weight"] == "Q6_K"
        assert formats["model.embed_tokens.weight"] == "Q8_0"
        assert "model.norm.weight" not in formats
        assert set(formats) == {n for n in blocks.keys() if blocks.get_slice(n).get_dtype() == "U8"}
        for name in dense.keys():
            want = dense.get_tensor(name)
            got = blocks.get_tensor(name)
            if name in formats:
                assert got.dtype == torch.uint8
                got = dequantize_ref(got, formats[name])
            assert torch.equal(got, want), name


def test_block_source_slices_rows_and_whole_block_columns():
    w = torch.randn(6, 512, generator=torch.Generator().manual_seed(8))
    src = BlockSource.of_rows(quantize_ref(w, "Q4_K"), "Q4_K")
    dense = src.dequantized()
    assert src.shape == (6, 512)
    assert torch.equal(src[2:5].dequantized(), dense[2:5])
    assert torch.equal(src[:, 256:512].dequantized(), dense[:, 256:])
    with pytest.raises(ValueError, match="not whole Q4_K blocks of 256"):
        src[:, 128:256]


def _placed(layer, spans):
    place_weights(layer, {"": spans} if spans else {}, torch.device("cpu"), torch.float32)
    return layer


def _build(cls, *args, spans_of=None, **kwargs):
    with deferred_weights():
        layer = cls(*args, **kwargs)
    spans = spans_of(layer) if spans_of else None
    return _placed(layer, spans)


@pytest.mark.parametrize("rank", [0, 1])
def test_quantized_layers_shard_like_dense_ones_and_compute_the_same(rank):
    """Each tensor-parallel layer kind, rank `rank` of 2, loaded from blocks (kept) and from their dequantized
    values (dense): the same rows, the same outputs. QKV holds Q4_K q/k and Q6_K v: two parts."""
    g = torch.Generator().manual_seed(9)
    hidden, head_dim = 512, 64
    fmts = {"q": "Q4_K", "k": "Q4_K", "v": "Q6_K", 0: "Q4_K", 1: "Q4_K", None: "Q8_0"}
    cases = [
        (QKVParallelLinear, (hidden, head_dim, 4, 2), {"q": (256, 512), "k": (128, 512), "v": (128, 512)}),
        (MergedColumnParallelLinear, (hidden, [256, 256]), {0: (256, 512), 1: (256, 512)}),
        (ColumnParallelLinear, (hidden, 128), {None: (128, 512)}),
        (RowParallelLinear, (512, 64), {None: (64, 512)}),
    ]
    x = torch.randn(3, hidden, generator=g)
    with pretend_rank(rank, 2):
        for cls, args, shards in cases:
            sources = {s: BlockSource.of_rows(quantize_ref(torch.randn(*shape, generator=g), fmts[s]), fmts[s])
                       for s, shape in shards.items()}

            def spans_of(layer):
                return [(*layer.shard_rows(s)[:2], fmts[s]) for s in shards]

            kept, dense = _build(cls, *args, spans_of=spans_of), _build(cls, *args)
            for s, src in sources.items():
                kept.load_weight(kept.weight, src, s)
                dense.load_weight(dense.weight, src.dequantized(), s)
            assert kept.weight.dtype == torch.uint8
            assert len(kept.layout.parts) == (2 if cls is QKVParallelLinear else 1)
            assert torch.equal(kept.layout.dequantize(kept.weight), dense.weight)
            xin = x if cls is not RowParallelLinear else x[:, :256]   # (the ranks' all-reduce left out)
            assert torch.equal(apply_weight(xin, kept), apply_weight(xin, dense))


def test_row_parallel_split_inside_a_block_is_refused(tmp_path):
    from localllm.engine.model_builder import build_model
    from localllm.loader.hf_dir import load_hf_config

    path = write_quantized_gguf(tmp_path / "k.gguf", lambda name: "Q4_K")
    convert_gguf(path, tmp_path / "blocks", keep_blocks=True)
    hf_config = load_hf_config(tmp_path / "blocks")
    with pretend_rank(0, 2), pytest.raises(UnsupportedModelError, match="128 input features per GPU are not "
                                                                         "whole Q4_K blocks of 256"):
        build_model(hf_config, tmp_path / "blocks", "native", torch.device("meta"), torch.float32)
    model, _ = build_model(hf_config, tmp_path / "blocks", "native", torch.device("meta"), torch.float32)
    assert model.model.layers[0].self_attn.o_proj.layout.formats == ["Q4_K"]
