"""The KV pool's size from the config and the memory figures (engine/kv_pool.py): desktop and server sizing."""
from __future__ import annotations

import pytest

from localllm.config import Config
from localllm.engine.kv_pool import (DESKTOP_FLOOR_BYTES, GiB, PoolRequest, SERVER_FRACTION, gpu_budget_bytes,
                                     pool_blocks)

H200 = 140 * GiB
# Qwen3-0.6B in bf16: 28 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes x 16 tokens = 1.75 MiB a block
QWEN3_BLOCK = 28 * 8 * 128 * 2 * 2 * 16


def _request(max_num_seqs=64, model_len=40960, fraction=None, block_bytes=QWEN3_BLOCK):
    return PoolRequest(block_bytes, -(-model_len // 16), max_num_seqs, fraction)


def test_desktop_pool_of_a_small_model_on_a_big_card_is_capped_at_a_quarter_of_it():
    request = _request()
    budget = gpu_budget_bytes(request, free_bytes=H200 - 2 * GiB, total_bytes=H200, step_bytes=1 * GiB)
    assert budget == pytest.approx(H200 - 3 * GiB - (1 - SERVER_FRACTION) * H200)
    blocks = pool_blocks(request, budget, H200)
    assert blocks == 20480   # 35 GiB / 1.75 MiB, where the server sizing would take 65,536+
    assert pool_blocks(_request(fraction=0.9), budget, H200) == int(budget // QWEN3_BLOCK) == 71972   # 123 GiB


def test_desktop_pool_is_what_the_sequences_can_use_when_that_is_less():
    request = _request(max_num_seqs=4, model_len=8192)
    assert pool_blocks(request, 100 * GiB, H200) == 4 * 512


def test_desktop_pool_has_a_floor_of_one_gib_and_one_full_context():
    tiny = _request(max_num_seqs=1, model_len=256)
    assert pool_blocks(tiny, 100 * GiB, H200) == DESKTOP_FLOOR_BYTES // QWEN3_BLOCK == 585
    # an 8B-like model (2 MiB blocks) with a 128k context on a 24 GiB card: one whole context (16 GiB) beats the
    # 6 GiB cap, within the budget
    long = _request(max_num_seqs=8, model_len=131072, block_bytes=2 << 20)
    assert pool_blocks(long, 20 * GiB, 24 * GiB) == 8192
    assert pool_blocks(long, 10 * GiB, 24 * GiB) == 5120


def test_no_pool_beyond_the_budget_in_either_sizing():
    for fraction in (None, 0.5):
        assert pool_blocks(_request(fraction=fraction), 3 * QWEN3_BLOCK + 5, H200) == 3
        assert pool_blocks(_request(fraction=fraction), QWEN3_BLOCK - 1, H200) == 0
        assert pool_blocks(_request(fraction=fraction), -1 * GiB, H200) == 0


def test_server_sizing_fills_its_fraction_up_to_four_contexts_per_slot():
    request = _request(max_num_seqs=2, model_len=1024, fraction=0.5)
    budget = gpu_budget_bytes(request, free_bytes=100 * GiB, total_bytes=H200, step_bytes=0)
    assert budget == 100 * GiB - 70 * GiB
    assert pool_blocks(request, budget, H200) == 4 * 2 * 64


def test_cpu_pool_takes_its_budget_up_to_four_contexts_per_slot():
    assert pool_blocks(_request(max_num_seqs=3, model_len=50), 4 * GiB, None) == 4 * 3 * 4
    assert pool_blocks(_request(), 10 * QWEN3_BLOCK, None) == 10


def test_config_takes_a_fraction_or_none():
    assert Config().gpu_memory_fraction is None
    assert Config(gpu_memory_fraction=0.5).gpu_memory_fraction == 0.5
    with pytest.raises(ValueError, match="gpu_memory_fraction"):
        Config(gpu_memory_fraction=1.5)


def test_serve_flag_and_environment_choose_server_sizing(monkeypatch):
    from localllm.cli.daemon import memory_override
    from localllm.server.settings import parse_engine_overrides
    from localllm.settings import SettingsError

    monkeypatch.delenv("LOCALLLM_GPU_MEMORY_FRACTION", raising=False)
    assert memory_override(None) == []
    monkeypatch.setenv("LOCALLLM_GPU_MEMORY_FRACTION", "0.5")
    assert parse_engine_overrides(memory_override(None)) == {"gpu_memory_fraction": 0.5}
    assert parse_engine_overrides(memory_override(0.8)) == {"gpu_memory_fraction": 0.8}   # the flag wins
    monkeypatch.setenv("LOCALLLM_GPU_MEMORY_FRACTION", "2")
    with pytest.raises(SettingsError, match="LOCALLLM_GPU_MEMORY_FRACTION"):
        memory_override(None)
