"""The one thing the engine needs of a model's tokenizer, its end-of-sequence token's id, kept in the data
directory after the first read (as loader.config_cache keeps configs): reading the whole tokenizer takes ~0.15 s of
each engine start on a small CPU (its import, then building tokenizer.json's vocabulary and merges), on the way to
the first token, while the front end reads it anyway for the text. An entry is keyed by the bytes of the files the
tokenizer is read from and by the installed `tokenizers`, so that a changed file reads the tokenizer anew."""
from __future__ import annotations

from pathlib import Path

from localllm.loader.config_cache import entry_path, read_cached, write_cached

# what loader.tokenizer.Tokenizer.from_dir reads the ids and the special tokens from
SOURCE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_eos_id(model_dir: Path) -> int | None:
    """The id of the token the tokenizer names its end of sequence (None when it names none). Raises what reading
    the tokenizer raises when it is not cached (no tokenizer.json, a malformed file)."""
    path = entry_path("tokenizers", "tokenizers", _sources(model_dir))
    cached = read_cached(path)
    if cached is not None and "eos_token_id" in cached:
        return cached["eos_token_id"]
    from localllm.loader.tokenizer import Tokenizer

    return write_cached(path, {"eos_token_id": Tokenizer.from_dir(model_dir).eos_token_id})["eos_token_id"]


def _sources(model_dir: Path) -> bytes:
    """The source files' names, sizes and bytes, one after the other (a missing one counts as absent)."""
    parts = []
    for name in SOURCE_FILES:
        try:
            content = (model_dir / name).read_bytes()
        except FileNotFoundError:
            parts.append(f"{name}\0absent\0".encode())
            continue
        parts.append(f"{name}\0{len(content)}\0".encode() + content)
    return b"".join(parts)
