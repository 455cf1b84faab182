"""kv_cache_dtype="fp8" (engine/model_runner.py): the setting's values and where it is refused, the flags that carry
it (serve, run, bench) and the KV pool it gives: one byte an element, so twice the blocks in the same memory. The
kernels' side is tested under Triton's interpreter (test_kernels.py, test_fused_kernels.py) and compiled for sm_90
(test_kernel_compile.py); an engine over an fp8 pool runs on a GPU only (scripts/gpu_agreement.py)."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from localllm.cli.main import app
from localllm.config import Config
from localllm.engine.model_runner import FP8_KV_DTYPE, check_kv_cache_dtype, kv_bytes_per_block
from localllm.engine.rank_setup import set_up_rank
from localllm.errors import LocalLLMError
from tiny_models import CONFIGS

CPU = torch.device("cpu")
GiB = 1 << 30


def test_the_setting_is_auto_or_fp8():
    assert Config().kv_cache_dtype == "auto"
    assert Config(kv_cache_dtype="fp8").kv_cache_dtype == "fp8"
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, fp8, got 'e5m2'"):
        Config(kv_cache_dtype="e5m2")


def test_fp8_is_refused_off_a_cuda_gpu_with_one_clear_line():
    check_kv_cache_dtype("auto", CPU)
    with pytest.raises(LocalLLMError, match="kv_cache_dtype fp8 needs a CUDA GPU; on cpu the KV cache stays") as e:
        check_kv_cache_dtype("fp8", CPU)
    assert "\n" not in str(e.value)


def test_the_python_api_refuses_fp8_on_the_cpu_before_loading_weights():
    from localllm import LLM

    with pytest.raises(LocalLLMError, match="kv_cache_dtype fp8 needs a CUDA GPU"):
        LLM(device="cpu", kv_cache_dtype="fp8")


def _rank(kv_cache_dtype: str, pool_bytes: int):
    hf_config = CONFIGS["qwen3"]()
    hf_config.architectures = ["Qwen3ForCausalLM"]
    config = Config(device="cpu", dtype="bfloat16", quantization="none", kv_cache_dtype=kv_cache_dtype,
                    kv_memory_gib=pool_bytes / GiB, max_num_seqs=8)
    return set_up_rank(config, hf_config, None, CPU, torch.bfloat16)


def test_an_fp8_pool_holds_twice_the_blocks_in_the_same_memory():
    """The rank's sizing counts one byte an element: the same budget gives twice the blocks, allocated as a
    float8_e4m3fn pool of the same bytes. (The runner is built on the CPU here, below the engine's refusal, only
    to size and allocate the pool.)"""
    hf_config = CONFIGS["qwen3"]()
    bf16_block = kv_bytes_per_block(hf_config, 16, torch.bfloat16)
    assert bf16_block == 2 * 2 * 2 * 24 * 16 * 2   # K and V x 2 layers x 2 KV heads x head_dim 24 x 16 tokens x 2 B
    assert kv_bytes_per_block(hf_config, 16, FP8_KV_DTYPE) * 2 == bf16_block
    auto, fp8 = _rank("auto", 40 * bf16_block), _rank("fp8", 40 * bf16_block)
    assert (auto.num_blocks, fp8.num_blocks) == (40, 80)
    assert auto.runner.kv_cache.dtype == torch.bfloat16 and fp8.runner.kv_cache.dtype == FP8_KV_DTYPE
    assert fp8.runner.kv_cache.shape[2] == 80
    assert fp8.runner.kv_cache.nbytes == auto.runner.kv_cache.nbytes == 40 * bf16_block


def test_serve_flag_becomes_the_engine_setting():
    from localllm.cli.daemon import kv_cache_override
    from localllm.server.settings import ServerSettings, parse_engine_overrides

    assert kv_cache_override(None) == []
    engine = parse_engine_overrides(kv_cache_override("fp8"))
    assert engine == {"kv_cache_dtype": "fp8"}
    assert ServerSettings(engine=engine).engine_config("m").kv_cache_dtype == "fp8"


def test_run_passes_the_flag_to_the_daemon_it_starts():
    from localllm.cli.run import daemon_args

    assert daemon_args(None, None, None, "fp8") == ["--kv-cache-dtype", "fp8"]
    assert daemon_args(2, None, None) == ["--tp", "2"]


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["run", "hello"], ["bench", "latency"],
                                     ["bench", "throughput"], ["bench", "sweep"]])
def test_a_bad_value_is_one_error_line_before_anything_starts(command, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    result = CliRunner().invoke(app, command + ["--kv-cache-dtype", "fp4"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        "Error: kv_cache_dtype must be one of auto, fp8, got 'fp4'"


def test_bench_refuses_fp8_for_transformers():
    result = CliRunner().invoke(app, ["bench", "latency", "--backend", "hf", "--kv-cache-dtype", "fp8"])
    assert result.exit_code == 1
    assert "Error: --kv-cache-dtype applies to --backend localllm only" in result.output


def test_the_tensor_parallel_degree_is_sized_with_the_fp8_cache():
    from localllm.engine.model_runner import kv_cache_torch_dtype
    from localllm.engine.tp_degree import model_size

    hf_config = CONFIGS["qwen3"]()
    hf_config.architectures = ["Qwen3ForCausalLM"]
    assert kv_cache_torch_dtype("auto", torch.bfloat16) == torch.bfloat16
    bf16 = model_size(hf_config, torch.bfloat16, 1024)
    fp8 = model_size(hf_config, torch.bfloat16, 1024, kv_dtype=kv_cache_torch_dtype("fp8", torch.bfloat16))
    assert 2 * fp8.kv_bytes_per_token == bf16.kv_bytes_per_token == 2 * 2 * 2 * 24 * 2
    assert fp8.weight_bytes == bf16.weight_bytes
