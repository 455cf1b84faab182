"""Saved conversations: one JSON file each under data_dir()/chats/."""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from localllm.hub.paths import data_dir, private_dir


def chats_dir() -> Path:
    return data_dir() / "chats"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Conversation:
    model: str
    system: str = ""
    messages: list[dict] = field(default_factory=list)   # {"role": "user"|"assistant", "content": str}
    temperature: float = 0.7
    max_tokens: int = 512
    title: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def request_messages(self) -> list[dict]:
        """What the API gets: the system prompt, then the turns."""
        system = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return system + [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def display_title(self) -> str:
        if self.title:
            return self.title
        first = next((m["content"] for m in self.messages if m["role"] == "user"), "")
        return " ".join(first.split())[:60] or "(empty)"

    @classmethod
    def from_dict(cls, value: dict) -> "Conversation":
        known = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
        return cls(**known)


def _path(conversation_id: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", conversation_id):
        raise ValueError(f"not a conversation id: {conversation_id!r}")
    return chats_dir() / f"{conversation_id}.json"


def save(conversation: Conversation) -> Path:
    conversation.updated_at = _now()
    path = _path(conversation.id)
    private_dir(path.parent)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(conversation), indent=1, ensure_ascii=False))
    os.replace(tmp, path)
    return path


def load(conversation_id: str) -> Conversation:
    return Conversation.from_dict(json.loads(_path(conversation_id).read_text()))


def delete(conversation_id: str) -> bool:
    try:
        _path(conversation_id).unlink()
        return True
    except FileNotFoundError:
        return False


def list_all() -> list[Conversation]:
    """Every readable saved conversation, most recently updated first (unreadable files are skipped)."""
    found = []
    for path in chats_dir().glob("*.json") if chats_dir().is_dir() else []:
        try:
            found.append(Conversation.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda c: c.updated_at, reverse=True)
