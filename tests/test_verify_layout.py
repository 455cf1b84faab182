"""The uniform layout of verifying steps (engine/batch.py, VerifyLayout): every sequence gets query_len rows, its
real tokens first and padding after, with a context that counts the padding. The exact arrays of a packed step; the
steps that keep the chunk layout; and the same logits, row for row, as the chunk layout gives on the same KV cache
(whose unused slots hold garbage, so a padding key that leaked into a real row would show)."""
from __future__ import annotations

import pytest
import torch

from localllm.engine.batch import H, StepBatchBuilder, VerifyLayout, unpack
from localllm.engine.model_runner import ModelRunner
from localllm.engine.request import Sequence
from localllm.engine.scheduler import ScheduledSeq
from localllm.sampling_params import SamplingParams
from tiny_models import CONFIGS

CPU = torch.device("cpu")
BLOCK = 4


def sequence(num_tokens: int, computed: int, blocks: list[int], drafts: list[int] = (), pending: int = 0) -> Sequence:
    seq = Sequence("r", [100 + i for i in range(num_tokens)], SamplingParams(temperature=0))
    seq.num_computed_tokens, seq.block_table, seq.draft_token_ids = computed, list(blocks), list(drafts)
    seq.num_pending = seq.pending_index = pending
    return seq


def builder(layout: VerifyLayout | None, max_num_tokens: int = 8) -> StepBatchBuilder:
    return StepBatchBuilder(BLOCK, CPU, max_num_tokens, 8, 8, layout)


def payload_parts(packed) -> dict[str, list[int]]:
    b, t, width = (int(packed.header[H[k]]) for k in ("num_seqs", "num_tokens", "table_width"))
    batch = unpack(packed.header, packed.payload.clone(), CPU, torch.tensor([77, 88]))
    meta = batch.attention
    return dict(ids=batch.input_ids.tolist(), positions=batch.positions.tolist(), slots=meta.slot_mapping.tolist(),
                logits=batch.logits_indices.tolist(), starts=meta.query_start_loc.tolist(),
                context=meta.context_lens.tolist(), tables=meta.block_tables.view(b, width).tolist(),
                shape=[t, meta.num_decodes, meta.max_query_len, meta.max_context_len, batch.uniform_query_len])


def test_a_verifying_step_is_padded_to_query_len_rows_per_sequence():
    """A plain decode, one whose input is still in flight, and one verifying 2 drafts, 4 rows each (max budget 8
    tokens, smaller than the 12 rows: the padding does not count against it)."""
    plain = sequence(6, 5, [7, 3])
    in_flight = sequence(4, 4, [5, 6], pending=1)
    drafting = sequence(10, 9, [2, 9, 4], drafts=[50, 51])
    scheduled = [ScheduledSeq(drafting, 3, 2), ScheduledSeq(plain, 1), ScheduledSeq(in_flight, 1)]
    packed = builder(VerifyLayout(4, 4)).pack(scheduled)
    assert packed.sampling_seqs == [plain, in_flight, drafting] and packed.num_drafts == [0, 0, 2]
    assert payload_parts(packed) == dict(
        ids=[105, 0, 0, 0, 88, 0, 0, 0, 109, 50, 51, 0],
        positions=[5, 5, 5, 5, 4, 4, 4, 4, 9, 10, 11, 11],
        slots=[13, -1, -1, -1, 24, -1, -1, -1, 17, 18, 19, -1],
        logits=[0, 4, 8, 9, 10],           # the real rows only, in the order of the chunk layout
        starts=[0, 4, 8, 12],
        context=[9, 8, 13],                # real context + padding rows: the real rows keep their positions
        tables=[[7, 3, 0, 0], [5, 6, 0, 0], [2, 9, 4, 0]],   # wide enough for the padded contexts
        shape=[12, 0, 4, 13, 4])


def test_the_chunk_layout_of_the_same_step():
    plain = sequence(6, 5, [7, 3])
    drafting = sequence(10, 9, [2, 9, 4], drafts=[50, 51])
    packed = builder(None).pack([ScheduledSeq(drafting, 3, 2), ScheduledSeq(plain, 1)])
    assert payload_parts(packed) == dict(
        ids=[105, 109, 50, 51], positions=[5, 9, 10, 11], slots=[13, 17, 18, 19], logits=[0, 1, 2, 3],
        starts=[0, 1, 4], context=[6, 12], tables=[[7, 3, 0], [2, 9, 4]], shape=[4, 1, 3, 12, 0])


@pytest.mark.parametrize("case", ["no drafts", "a prefill", "a partial prefill chunk", "too many sequences",
                                  "no layout"])
def test_steps_that_keep_the_chunk_layout(case):
    drafting = ScheduledSeq(sequence(10, 9, [2, 9, 4], drafts=[50, 51]), 3, 2)
    plain = ScheduledSeq(sequence(6, 5, [7, 3]), 1)
    scheduled = {
        "no drafts": [plain],
        "a prefill": [drafting, ScheduledSeq(sequence(5, 0, [1, 8]), 5)],
        # one prompt token of three left to compute: one row, but it samples nothing yet
        "a partial prefill chunk": [drafting, ScheduledSeq(sequence(3, 1, [1]), 1)],
        "too many sequences": [drafting, plain, ScheduledSeq(sequence(6, 5, [10, 11]), 1)],
        "no layout": [drafting, plain],
    }[case]
    layout = None if case == "no layout" else VerifyLayout(4, 2)
    packed = builder(layout).pack(scheduled)
    assert int(packed.header[H["uniform_query_len"]]) == 0
    assert int(packed.header[H["num_tokens"]]) == sum(s.num_new_tokens for s in scheduled)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen3"])
def test_uniform_steps_give_the_chunk_layouts_logits(arch):
    """Sequences verifying 0, 1 and 3 drafts over prefixes of 9, 13 and 6 tokens (mistral: sliding window 12), in
    a cache whose every other slot holds random values."""
    torch.manual_seed(0)
    config = CONFIGS[arch]()
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    runner = ModelRunner(config, None, CPU, torch.float32, "none")
    runner.allocate_kv_cache(24, BLOCK)
    runner.kv_cache.normal_()
    seqs = [sequence(10, 0, [0, 5, 9]), sequence(14, 0, [3, 1, 7, 8], drafts=[7]),
            sequence(7, 0, [12, 2, 4], drafts=[1, 2, 3])]
    prefill = builder(None, 64)
    runner.forward(prefill.build([ScheduledSeq(s, len(s) - 1) for s in seqs]))
    for s in seqs:
        s.num_computed_tokens = len(s) - 1
    verify = [ScheduledSeq(s, 1 + len(s.draft_token_ids), len(s.draft_token_ids)) for s in seqs]
    chunks = runner.forward(prefill.build(verify))
    uniform_batch = builder(VerifyLayout(5, 4)).build(verify)
    assert uniform_batch.uniform_query_len == 5 and uniform_batch.input_ids.shape[0] == 15
    uniform = runner.forward(uniform_batch)
    assert chunks.shape == uniform.shape == (1 + 2 + 4, runner.model.config.vocab_size)
    torch.testing.assert_close(uniform, chunks, atol=1e-5, rtol=1e-5)
