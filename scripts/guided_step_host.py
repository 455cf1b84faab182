"""Where the host time of a guided engine step goes: an EngineCore on the CPU (a tiny random-weight Llama whose
vocabulary is the embedded model's tokenizer's, so the grammar sees real tokens; overlapped steps, as on a GPU) runs N
sequences under the small JSON schema of `localllm bench grammar` (objects one after another, never ending), and
each phase of the guided work is timed where the engine calls it:
  advance  GrammarMatchers.advance: the step's tokens consumed by the N matchers, with the end checks
  start    GrammarMatchers.start_masks on the caller's thread (rows, buffer, hand-off)
  compute  the N masks, on the mask thread: overlaps the rest of the host's work
  wait     what the sampler then still waits for them: the part of `compute` on the step's critical path
  upload   PendingMasks.result besides the wait: the copies to the device
  apply    TokenMask.apply_
  step     EngineCore.step as a whole (including the tiny model's forward and sampling)
--masks-inline computes the masks on the caller's thread instead (wait = 0, compute all on the critical path), as
the engine did before they moved to a thread.

    OMP_WAIT_POLICY=PASSIVE python scripts/guided_step_host.py --sequences 16,256 --steps 60
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import llguidance.numpy
from transformers import LlamaConfig

from localllm.bench.grammar import endless_objects_guidance
from localllm.config import Config
from localllm.engine import grammar
from localllm.engine.core import EngineCore
from localllm.loader.hf_dir import open_model
from localllm.sampling_params import SamplingParams

PHASES = ("advance", "start", "compute", "wait", "upload", "apply", "step")


def timed(times: dict[str, list[float]], name: str, function):
    def call(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[name].append(time.perf_counter() - began)
    return call


def instrument(times: dict[str, list[float]], masks_inline: bool) -> None:
    """Wraps the engine's grammar calls with timers (this process only)."""
    matchers = grammar.GrammarMatchers
    matchers.advance = timed(times, "advance", matchers.advance)
    start_masks = matchers.start_masks
    matchers.start_masks = timed(times, "start", lambda self, seqs, background=True:
                                 start_masks(self, seqs, background and not masks_inline))
    llguidance.numpy.fill_next_token_bitmask_par = timed(times, "compute", llguidance.numpy.fill_next_token_bitmask_par)
    pending = grammar.PendingMasks
    result = pending.result

    def timed_result(self):
        began = time.perf_counter()
        if self.done is not None:
            self.done.result()
        times["wait"].append(time.perf_counter() - began)
        return timed(times, "upload", result)(self)
    pending.result = timed_result
    grammar.TokenMask.apply_ = timed(times, "apply", grammar.TokenMask.apply_)


def run(sequences: int, steps: int, masks_inline: bool) -> dict[str, float]:
    tokenizer = open_model(None)
    hf_config = LlamaConfig(vocab_size=tokenizer.hf_config.vocab_size, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            max_position_embeddings=4096, tie_word_embeddings=True,
                            architectures=["LlamaForCausalLM"])
    core = EngineCore(Config(device="cpu", dtype="float32", overlap_steps=True, max_num_seqs=sequences,
                             num_kv_blocks=sequences * (steps + 40) // 16 + 64),
                      None, hf_config, set(), tokenizer_dir=tokenizer.model_dir)
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=steps + 8, guidance=endless_objects_guidance())
    for i in range(sequences):
        core.add_request(f"r{i}", [1, 2, 3, 4 + i % 50], params)
    times: dict[str, list[float]] = defaultdict(list)
    instrument(times, masks_inline)
    for _ in range(steps):
        timed(times, "step", core.step)()
    while core.has_unfinished:   # the rest, untimed
        core.step()
    # per step; the first quarter warms up
    return {name: statistics.median(times[name][len(times[name]) // 4:]) * 1000 if times[name] else 0.0
            for name in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", default="16,256")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--masks-inline", action="store_true")
    args = parser.parse_args()
    print("sequences | " + " | ".join(f"{name} ms" for name in PHASES))
    for count in (int(n) for n in args.sequences.split(",")):
        figures = run(count, args.steps, args.masks_inline)
        print(f"{count} | " + " | ".join(f"{figures[name]:.2f}" for name in PHASES), flush=True)


if __name__ == "__main__":
    main()
