"""How a download shows its progress (pull from the Hub, the embedded model from PyPI): a Reporter gets status
lines and hands out a tqdm-like bar class per file. This one shows nothing; the CLI's draws rich bars, the
daemon's turns them into Ollama's progress lines."""
from __future__ import annotations


class Reporter:
    """Shows nothing."""

    def status(self, message: str) -> None:
        pass

    def bar_class(self, filename: str, size: int | None):
        """A tqdm-like class huggingface_hub instantiates (with total=, initial=, desc=...) to report bytes."""
        return SilentBar


class SilentBar:
    """The part of tqdm's interface huggingface_hub's downloaders use (plain HTTP and Xet), doing nothing."""

    total: int | None = None

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n: int = 1) -> None:
        pass

    def update_transfer(self, n: int = 1) -> None:  # network bytes (Xet); the bars count bytes written
        pass

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def set_transfer_postfix_str(self, *args, **kwargs) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass
