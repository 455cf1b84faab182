"""Telling a cold start (Triton kernels compiled) from a warm one (all from Triton's disk cache)."""
from __future__ import annotations

from localllm.engine.kernel_cache import cached_kernel_count, start_kind, triton_cache_dir


def test_counts_the_kernel_directories_of_the_cache(tmp_path):
    cache = tmp_path / "triton"
    assert cached_kernel_count(cache) == 0   # no cache yet: nothing compiled ever
    cache.mkdir()
    for name in ("a1", "b2"):
        (cache / name).mkdir()
    (cache / "lock").write_text("")
    assert cached_kernel_count(cache) == 2
    assert cached_kernel_count(None) is None


def test_start_kind():
    assert start_kind(0, 23) == "cold start: 23 Triton kernels compiled"
    assert start_kind(23, 23) == "warm start: Triton kernels from the disk cache"
    assert start_kind(None, None) == ""


def test_the_cache_is_tritons_own_which_follows_its_variable(monkeypatch, tmp_path):
    import pytest
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    assert triton_cache_dir() == tmp_path
