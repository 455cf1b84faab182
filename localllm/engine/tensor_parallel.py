"""The engine core's tensor parallelism: which degree to run, and rank 0's group (its workers, the step
channel to them, its own device). The core stays single: it schedules, samples and keeps the books; the
workers only run the forward of each step it broadcasts."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from localllm import settings
from localllm.config import Config
from localllm.cpu_cores import available_cores
from localllm.engine.model_runner import kv_cache_torch_dtype
from localllm.engine.step_channel import StepSender
from localllm.engine.tp_degree import (TensorParallelError, check_degree, free_gpu_bytes, model_size,
                                       pick_degree, refusal)
from localllm.engine.tp_workers import TPWorkers, WorkerDiedError
from localllm.layers.parallel import create_store, destroy_tensor_parallel, init_tensor_parallel

# What crosses to the workers is NCCL's own traffic; NVLink multicast (NVLS) is off, since it is not usable on
# the machines this runs on and NCCL would otherwise try to set it up.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0"}


def resolve_degree(config: Config, hf_config, device: torch.device, dtype: torch.dtype, model_len: int,
                   model_dir=None) -> int:
    """config.tensor_parallel_size, checked; when None: 1 on CPU, and on GPUs the smallest degree that fits."""
    asked = config.tensor_parallel_size
    if device.type != "cuda":
        reason = refusal(hf_config.num_attention_heads, hf_config.num_key_value_heads, asked or 1)
        if reason:
            raise TensorParallelError(reason)
        return asked or 1
    size = model_size(hf_config, dtype, model_len, model_dir, config.quantization,
                      kv_cache_torch_dtype(config.kv_cache_dtype, dtype))
    free = free_gpu_bytes()
    if asked is None:
        return pick_degree(size, free)
    check_degree(size, asked, free)
    return asked


def worker_threads(config: Config, world_size: int) -> int:
    """CPU threads per rank: what was asked for, else the cores shared evenly."""
    if config.num_threads:
        return config.num_threads
    return max(1, available_cores() // world_size)


@dataclass
class TensorParallel:
    workers: TPWorkers
    channel: StepSender
    device: torch.device          # rank 0's

    @classmethod
    def start(cls, world_size: int, config: Config, hf_config, model_dir, device: torch.device,
              dtype: torch.dtype, on_failure=None) -> TensorParallel:
        """Starts the workers and joins their group as rank 0 (they load their shards meanwhile)."""
        if device.type == "cuda":
            settings.set_library_defaults(NCCL_ENV)   # read by NCCL in this process and inherited by the workers
            device = torch.device("cuda", 0)
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(worker_threads(config, world_size))
        store = create_store(world_size)
        workers = TPWorkers(world_size, store.port, device, dtype, config, hf_config, model_dir,
                            worker_threads(config, world_size), on_failure)
        group = cls(workers, StepSender(device, workers.step_fds), device)
        try:
            with group.failures():
                init_tensor_parallel(0, world_size, device, store)
        except BaseException:
            workers.kill()
            raise
        return group

    @contextlib.contextmanager
    def failures(self):
        """Turns an error of a collective whose peer died into WorkerDiedError, naming the worker."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - gloo and NCCL raise assorted errors when a peer is gone
            failure = self.workers.wait_for_failure()
            if failure is not None:
                raise WorkerDiedError(failure) from None
            raise e
        self.workers.check()

    def stop(self) -> None:
        self.workers.stop(self.channel.send_stop)
        self.channel.close()
        destroy_tensor_parallel()
