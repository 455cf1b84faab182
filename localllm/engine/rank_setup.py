"""What every tensor-parallel rank (the engine core's own, rank 0, included) does once before serving steps:
build and load its shard of the model, size the KV pool (the ranks agree on the smallest count that fits all of
them), allocate it and capture the CUDA graphs of decode and verifying steps. With a draft model (speculative
draft:MODEL, one rank only) the same is done for it beside the target: its KV pool has as many blocks as the
target's (the two are indexed by the same block tables), so a block's bytes are both models' and the free memory is
measured with both models' weights loaded. The ranks run this in lockstep, since
the profiling step and the graph captures contain collectives.

The graphs' memory pool (a draft model's graphs share it) is not counted where the KV pool is sized: it is taken
after, from what the sizing leaves free, and holds one step's temporaries of at most max_num_batched_tokens rows
(the mixed-step graphs' largest; a verifying step's graph may have a few more), the size of the profiled step whose
peak the sizing keeps free. Neither is a draft model's activations when it
follows a step (the target's profiled step is the larger)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from localllm.config import Config
from localllm.engine.batch import StepBatchBuilder, VerifyLayout
from localllm.engine.draft_model import DraftFiles
from localllm.engine.kv_pool import GiB, PoolRequest, gpu_budget_bytes, pool_blocks
from localllm.engine.model_runner import ModelRunner, kv_bytes_per_block
from localllm.errors import LocalLLMError
from localllm.heap import retain_freed_memory
from localllm.layers.allreduce import make_reducer
from localllm.layers.parallel import min_over_ranks, tp_size, use_reducer
from localllm.layers.linear import RowParallelLinear
from localllm.layers.peer_exchange import enable_peer_exchange


@dataclass
class RankSetup:
    runner: ModelRunner
    builder: StepBatchBuilder
    num_blocks: int
    max_model_len: int
    draft_runner: ModelRunner | None = None   # the draft model's, with its own KV pool of num_blocks blocks


def set_up_rank(config: Config, hf_config, model_dir: Path | None, device: torch.device,
                dtype: torch.dtype, draft: DraftFiles | None = None) -> RankSetup:
    runner = ModelRunner(hf_config, model_dir, device, dtype, config.quantization, config.kv_cache_dtype)
    draft_runner = (ModelRunner(draft.hf_config, draft.model_dir, device, dtype, config.quantization,
                                config.kv_cache_dtype)
                    if draft is not None else None)
    if device.type == "cpu":   # the steps' temporaries are kept for reuse (heap.py); loading's went back already
        retain_freed_memory()
    if tp_size() > 1 and config.tp_allreduce == "fused":
        projections = [m for m in runner.model.modules() if isinstance(m, RowParallelLinear)]
        runner.peer_exchange = enable_peer_exchange(projections, device)
    elif tp_size() > 1 and config.tp_allreduce != "nccl":
        use_reducer(make_reducer(config.tp_allreduce, device, dtype))
    model_len = config.max_model_len or hf_config.max_position_embeddings
    if draft is not None:   # the draft model computes every position the target does
        model_len = min(model_len, draft.hf_config.max_position_embeddings)
    # the KV-sizing profile step may split its tokens over more sequences than max_num_seqs
    max_step_seqs = max(config.max_num_seqs, -(-config.max_num_batched_tokens // model_len))
    verify = verify_layout(config, device)
    builder = StepBatchBuilder(config.block_size, device, config.max_num_batched_tokens, max_step_seqs,
                               -(-model_len // config.block_size), verify)
    block_bytes = kv_bytes_per_block(hf_config, config.block_size, runner.kv_dtype, tp_size())
    if draft is not None:
        block_bytes += kv_bytes_per_block(draft.hf_config, config.block_size, draft_runner.kv_dtype)
    num_blocks = min_over_ranks(_num_kv_blocks(config, runner, builder, block_bytes, model_len), device)
    max_model_len = min(model_len, num_blocks * config.block_size)
    for each in (runner, draft_runner):
        if each is not None:
            each.allocate_kv_cache(num_blocks, config.block_size)
    if uses_cuda_graphs(config, device):
        runner.capture_graphs(config.max_num_seqs, max_model_len, config.block_size, verify,
                              mixed=(config.max_num_batched_tokens, config.max_num_seqs))
        if draft_runner is not None:   # its proposing steps replay the decode graphs (query_len 1)
            draft_runner.capture_graphs(config.max_num_seqs, max_model_len, config.block_size, verify,
                                        pool=runner.decode_graphs.pool)
    return RankSetup(runner, builder, num_blocks, max_model_len, draft_runner)


def uses_cuda_graphs(config: Config, device: torch.device) -> bool:
    return device.type == "cuda" and not config.enforce_eager


def verify_layout(config: Config, device: torch.device) -> VerifyLayout | None:
    """How verifying steps are laid out: uniformly where their CUDA graphs replay them (or where the config asks for
    it), else (None) as chunks of 1 + k rows. Nobody speculates with more than speculative_batch_limit running."""
    if config.speculative == "off":
        return None
    uniform = config.uniform_verify_steps
    if uniform is None:
        uniform = uses_cuda_graphs(config, device)
    if not uniform:
        return None
    return VerifyLayout(config.num_speculative_tokens + 1, min(config.speculative_batch_limit, config.max_num_seqs))


def _num_kv_blocks(config: Config, runner: ModelRunner, builder: StepBatchBuilder, block_bytes: int,
                   model_len: int) -> int:
    """block_bytes: one rank's bytes of one block (the target's KV and the draft model's, if any)."""
    if config.num_kv_blocks:
        return config.num_kv_blocks
    request = PoolRequest(block_bytes, -(-model_len // config.block_size), config.max_num_seqs,
                          config.gpu_memory_fraction)
    device = runner.device
    if device.type == "cuda":
        step = runner.peak_step_bytes(builder, config.max_num_batched_tokens, model_len)
        free, total = torch.cuda.mem_get_info(device)
        budget = gpu_budget_bytes(request, free, total, step)
    else:   # kv_memory_gib is the whole pool's, shared by the ranks' shards of it
        budget, total = config.kv_memory_gib * GiB / tp_size(), None
    blocks = pool_blocks(request, budget, total)
    if blocks == 0:
        raise LocalLLMError(f"no memory left for the KV cache on {device} "
                            f"({budget / GiB:.2f} GiB available after the weights and activations)")
    return blocks
