"""Durations as Ollama takes them (keep_alive, $LOCALLLM_KEEP_ALIVE): Go's duration syntax ("5m", "1h30m",
"300ms", "-1h") or a bare number of seconds ("90", "-1")."""
from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION = re.compile(rf"[-+]?(?:{_NUMBER}(?:ns|us|µs|μs|ms|s|m|h))+")


def parse_duration(text: str) -> float:
    """Seconds; raises ValueError saying what is expected."""
    text = text.strip().lower()
    try:
        return float(re.fullmatch(rf"[-+]?{_NUMBER}", text).group(0))
    except AttributeError:
        pass
    if not _GO_DURATION.fullmatch(text):
        raise ValueError("expected seconds or a duration such as 5m, 1h30m or 300ms (negative = forever)")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))
    return -seconds if text.startswith("-") else seconds
