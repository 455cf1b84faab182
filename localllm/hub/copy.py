"""A pulled model under a second name (`localllm cp`, Ollama's /api/copy): another store entry for the same files,
not a copy of them. The files stay until no name uses them (store.remove frees only what no other entry holds)."""
from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timezone

from localllm.errors import InvalidModelNameError
from localllm.hub import store
from localllm.hub.aliases import alias_target
from localllm.hub.embedded import EMBEDDED_ALIASES
from localllm.hub.reference import pulled_entry

# name, owner/name, either with a :tag; what resolve_reference reads as a pulled model's name, never as a path
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_NEW_NAME = re.compile(rf"{_PART}(/{_PART})?(:[A-Za-z0-9][A-Za-z0-9._-]{{0,63}})?")


def copy_model(source: str, destination: str) -> store.ModelEntry:
    """Registers `destination` as another name of the pulled model `source`; returns the new entry."""
    entry = pulled_entry(source)
    name = destination.strip()
    if not _NEW_NAME.fullmatch(name) or name.lower().endswith(".gguf"):
        raise InvalidModelNameError(f"invalid model name {destination!r}: a name is letters, digits, '.', '_' and "
                                    "'-', with an optional owner/ before it and :tag after it")
    if name.lower() in EMBEDDED_ALIASES or alias_target(name):
        raise InvalidModelNameError(f"'{name}' is an alias of a model localllm knows; pick another name")
    copied = replace(entry, name=name, modified=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    store.add(copied)
    return copied
