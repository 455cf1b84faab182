"""Owns the model and the KV pool; turns a step's batch into logits of the sequences that sample."""
from __future__ import annotations

import gc
import math
import mmap
from collections.abc import Iterator
from pathlib import Path

import torch

from localllm.cpu_kernels.ops import kv_half
from localllm.engine.batch import StepBatch, StepBatchBuilder, VerifyLayout
from localllm.engine.cuda_graphs import MixedGraphs, StepGraphs
from localllm.engine.request import Sequence
from localllm.engine.scheduler import ScheduledSeq
from localllm.hf_config import attention_head_dim
from localllm.engine.model_builder import build_model, weight_bytes, weights_label
from localllm.errors import LocalLLMError
from localllm.layers.attention import Attention
from localllm.layers.cpu_quant import attach_cpu_kernels
from localllm.layers.quantized import randomize_weights
from localllm.loader.safetensors import load_weights
from localllm.quantization import uses_cpu_kernels

# Steps of more tokens run eagerly: their kernels take long enough to hide their launches, and a graph's
# temporaries stay allocated (a Llama-3.1-8B step of 4,096 tokens needs a few hundred MB).
MIXED_GRAPH_MAX_TOKENS = 4096
# A prompt's scored rows go through the LM head this many at a time: 512 rows of a 152k vocabulary are 311 MB of
# float32 logits. (256 at a time cost the 8B ~3.5 ms more a 1,024-token prompt on an H200: more, smaller passes.)
SCORED_ROWS_AT_ONCE = 512


def kv_bytes_per_block(hf_config, block_size: int, dtype: torch.dtype, tp: int = 1) -> int:
    """One rank's bytes of one block: its KV heads (one each when they are replicated over the ranks)."""
    head_dim = attention_head_dim(hf_config)
    kv_heads = max(1, hf_config.num_key_value_heads // tp)
    per_token = 2 * hf_config.num_hidden_layers * kv_heads * head_dim
    return per_token * block_size * dtype.itemsize


# kv_cache_dtype="fp8": K/V stored as float8 e4m3 with a scale of 1 (values beyond +-448 saturate; no per-layer
# scale yet), read by the attention kernels with the GPU's fp8 conversion
FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_KV_MIN_CAPABILITY = (8, 9)   # Ada, Hopper and later convert e4m3 in hardware


def kv_cache_torch_dtype(kv_cache_dtype: str, dtype: torch.dtype) -> torch.dtype:
    """The KV pool's element type for Config.kv_cache_dtype on a GPU: the model's dtype, or e4m3."""
    return FP8_KV_DTYPE if kv_cache_dtype == "fp8" else dtype


def check_kv_cache_dtype(kv_cache_dtype: str, device: torch.device) -> None:
    """Refuses an fp8 KV cache where the kernels that read and write one do not run, before any weight is loaded."""
    if kv_cache_dtype != "fp8":
        return
    if device.type != "cuda":
        raise LocalLLMError(f"kv_cache_dtype fp8 needs a CUDA GPU; on {device.type} the KV cache stays "
                            "float32/float16 (leave kv_cache_dtype at auto)")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_KV_MIN_CAPABILITY:
        raise LocalLLMError(f"kv_cache_dtype fp8 needs a GPU of compute capability 8.9 or later (Ada, Hopper), "
                            f"{device} has {capability[0]}.{capability[1]}")


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor. On the CPU an anonymous memory map, whose pages the kernel zeroes as they are first written:
    a 1 GiB KV pool costs nothing at start instead of ~1 s of writing zeros on a small machine."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    count = math.prod(shape)
    return torch.frombuffer(mmap.mmap(-1, max(count * dtype.itemsize, 1)), dtype=dtype, count=count).view(shape)


class ModelRunner:
    def __init__(self, hf_config, model_dir: Path | None, device: torch.device, dtype: torch.dtype,
                 quantization: str = "none", kv_cache_dtype: str = "auto"):
        """model_dir None = random weights (benchmarks of speed only), in the format `quantization` names if it
        is one (localllm.quantization). kv_cache_dtype: Config.kv_cache_dtype (check_kv_cache_dtype first)."""
        self.device = device
        self.has_lm_head = True   # False for an embedding model whose checkpoint has no LM head: it cannot generate
        self.dtype = dtype
        self.model, quant = build_model(hf_config, model_dir, quantization, device, dtype)
        if model_dir is None:
            randomize_weights(self.model)
        else:
            self.has_lm_head = load_weights(self.model, model_dir, quant)
        self.model.eval()
        # float16 K/V when the compiled CPU kernels attend (half the bytes a decode step reads)
        self.kv_dtype = kv_cache_torch_dtype(kv_cache_dtype, dtype)
        if uses_cpu_kernels(quantization, device.type):
            attach_cpu_kernels(self.model)
            lib = next((m.cpu_ops for m in self.model.modules() if isinstance(m, Attention)), None)
            if self.kv_dtype == torch.float32 and lib is not None and kv_half(lib):
                self.kv_dtype = torch.float16
        self.weight_bytes = weight_bytes(self.model)
        self.quantization = weights_label(self.model, quant, quantization)
        self.hidden_size = hf_config.hidden_size
        self.peer_exchange = None   # the split all-reduce's buffer, where the ranks use it (rank_setup)
        self.kv_cache: torch.Tensor | None = None
        self.decode_graphs: StepGraphs | None = None
        self.verify_graphs: StepGraphs | None = None   # of uniformly laid-out verifying steps
        self.mixed_graphs: MixedGraphs | None = None   # of every other step

    @torch.inference_mode()
    def release_graphs(self) -> None:
        """Drops the captured graphs and waits for the GPU, so a process group they captured can end."""
        if self.decode_graphs is not None:
            self.decode_graphs = self.verify_graphs = self.mixed_graphs = None
            gc.collect()
            torch.cuda.synchronize(self.device)

    def capture_graphs(self, max_num_seqs: int, max_model_len: int, block_size: int,
                       verify: VerifyLayout | None, pool=None, mixed: tuple[int, int] | None = None) -> None:
        """The decode graphs, those of verifying steps when they are laid out uniformly, and with `mixed` = (most
        tokens, most sequences of a step) those of every other step (sharing one memory pool: the graphs'
        temporaries take as much as the largest one's, not their sum). pool: another runner's graphs' pool to share
        too (a draft model's graphs never replay while the target's run)."""
        graphs = dict(model=self.model, hidden_size=self.hidden_size, dtype=self.dtype, device=self.device,
                      block_size=block_size)
        self.decode_graphs = StepGraphs(max_num_seqs=max_num_seqs, max_context_len=max_model_len, pool=pool,
                                        **graphs)
        if verify is not None:
            # a plain decode padded to query_len rows counts query_len - 1 more tokens of context
            self.verify_graphs = StepGraphs(max_num_seqs=verify.max_seqs,
                                            max_context_len=max_model_len + verify.query_len - 1,
                                            query_len=verify.query_len, pool=self.decode_graphs.pool, **graphs)
        if mixed is not None:
            graphs.pop("block_size")
            self.mixed_graphs = MixedGraphs(max_tokens=min(mixed[0], MIXED_GRAPH_MAX_TOKENS), max_seqs=mixed[1],
                                            max_blocks=-(-max_model_len // block_size), max_context_len=max_model_len,
                                            pool=self.decode_graphs.pool, **graphs)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        first = layers[0]
        shape = (2, len(layers), num_blocks, block_size, first.num_kv_heads, first.head_dim)
        self.kv_cache = _zeros(shape, self.kv_dtype, self.device)
        for i, layer in enumerate(layers):
            layer.k_cache = self.kv_cache[0, i]
            layer.v_cache = self.kv_cache[1, i]

    def peak_step_bytes(self, builder: StepBatchBuilder, num_tokens: int, max_seq_len: int) -> int:
        """GPU memory a step of num_tokens prompt tokens needs beyond the weights (activations, logits),
        measured by running one on a throwaway KV cache."""
        seqs, left = [], num_tokens
        while left > 0:
            length = min(left, max_seq_len)
            seqs.append(Sequence("profile", [0] * length, None))
            left -= length
        blocks_per_seq = -(-len(seqs[0]) // builder.block_size)
        self.allocate_kv_cache(blocks_per_seq * len(seqs), builder.block_size)
        for i, seq in enumerate(seqs):
            seq.block_table = list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq))
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.forward(builder.build([ScheduledSeq(s, len(s)) for s in seqs]))
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        self.release_kv_cache()
        return peak

    def release_kv_cache(self) -> None:
        self.kv_cache = None
        for layer in self.model.modules():
            if isinstance(layer, Attention):
                layer.k_cache = layer.v_cache = torch.empty(0)
        torch.cuda.empty_cache()

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor | None:
        """Returns float32 logits [number of sampling rows, vocab]; None on tensor-parallel ranks other than 0,
        which only contribute their slice of the vocabulary (of the scored rows' logits too)."""
        hidden = self.hidden_states(batch)
        logits = self.logits(hidden, batch)
        for _ in self.scored_logits(hidden, batch):
            pass
        return logits

    @torch.inference_mode()
    def hidden_states(self, batch: StepBatch) -> torch.Tensor:
        """The final (normed) hidden states [T, hidden] of every token of the step, whole on every rank. From a
        graph they are its static buffer, overwritten by the next replay: read them before that. A uniformly laid-out
        step's padding rows are among them (its logits_indices skip them)."""
        for graphs in (self.decode_graphs, self.verify_graphs, self.mixed_graphs):
            if graphs is not None and graphs.can_run(batch):
                return graphs.run(batch)
        return self.model(batch.input_ids, batch.positions, batch.attention)

    @torch.inference_mode()
    def scored_logits(self, hidden: torch.Tensor, batch: StepBatch) -> Iterator[torch.Tensor | None]:
        """The float32 logits of the step's scored rows, SCORED_ROWS_AT_ONCE rows at a time (a prompt's logits over
        the whole vocabulary at once would take gigabytes); None on tensor-parallel ranks other than 0."""
        rows = batch.scored_indices
        for start in range(0, 0 if rows is None else rows.shape[0], SCORED_ROWS_AT_ONCE):
            logits = self.model.compute_logits(hidden[rows[start:start + SCORED_ROWS_AT_ONCE]])
            yield None if logits is None else logits.float()

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, batch: StepBatch) -> torch.Tensor | None:
        """forward's logits, from the step's hidden states."""
        rows = batch.logits_indices.shape[0]
        if rows == 0:
            return hidden.new_empty((0, 0), dtype=torch.float32)
        # the indices ascend without repeats, so as many as the rows are every row in order (a decode step's): the
        # gather would be a launch that copies them
        logits = self.model.compute_logits(hidden if rows == hidden.shape[0] else hidden[batch.logits_indices])
        return None if logits is None else logits.float()
