"""What `localllm bench latency` needs for speculative decoding: the code-edit prompt (a source file to rewrite with
small changes, which n-gram drafts copy from) and the acceptance figures of a run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localllm.engine.events import SpeculationStats

CODE_EDIT_TOKENS = 1500
CODE_EDIT_INSTRUCTION = ("Rewrite the following Python module with one change: rename the method `allocate` to "
                         "`grow`. Reply with the whole module and nothing else.\n\n```python\n")
# a real module of this package, about 1,700 tokens for common BPE vocabularies
CODE_EDIT_SOURCE = Path(__file__).resolve().parent.parent / "engine" / "block_manager.py"


@dataclass
class SpeculationFigures:
    """A run's verification counts and what they mean (see engine/speculation.SpeculationStats)."""
    speculative: str
    forced_acceptance: float | None
    draft_tokens: int
    accepted_tokens: int
    verify_steps: int
    acceptance_rate: float
    mean_accepted_length: float

    @classmethod
    def of(cls, speculative: str, forced_acceptance: float | None, draft_tokens: int, accepted_tokens: int,
           verify_steps: int) -> SpeculationFigures:
        stats = SpeculationStats(draft_tokens, accepted_tokens, verify_steps)
        return cls(speculative, forced_acceptance, draft_tokens, accepted_tokens, verify_steps, stats.acceptance_rate,
                   stats.mean_accepted_length)


def code_edit_prompt(tokenizer_dir: Path | None, vocab_size: int, max_tokens: int = CODE_EDIT_TOKENS) -> list[int]:
    """The instruction and a source file of about max_tokens tokens, in the model's tokens; without a tokenizer
    (random weights), the file's bytes as token ids."""
    text = CODE_EDIT_INSTRUCTION + CODE_EDIT_SOURCE.read_text(encoding="utf-8")
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).encode(text).ids
    else:
        ids = list(text.encode("utf-8"))
    return [t % vocab_size for t in ids[:max_tokens]]
