"""Everything a daemon is started with, validated once before it binds a socket."""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from localllm import settings as env
from localllm.config import Config

MAX_KEEP_ALIVE_S = 10 * 365 * 86400.0      # longer than this is what a negative value (forever) is for
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024   # far above any context's worth of text, far below a memory worry
# Config fields a daemon may not override: the model is chosen per request.
_NOT_OVERRIDABLE = {"model"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerSettings:
    host: str = env.HOST.default.host
    port: int = env.HOST.default.port        # 0 = any free port (the state file tells which)
    api_key: str | None = None               # required when host is not a loopback address
    allowed_hosts: list[str] = field(default_factory=list)   # Host header names accepted besides loopback; "*" = any
    cors_origins: list[str] = field(default_factory=list)    # browser origins allowed; "*" = any
    keep_alive_s: float = env.KEEP_ALIVE.default  # idle time before a model is unloaded; < 0 = never
    max_queued: int = env.MAX_QUEUED.default  # requests that may wait beyond what the engine runs at once
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES   # larger request bodies are refused with 413
    models: list[str] = field(default_factory=list)  # names/paths loadable besides aliases and the store; preloaded
    engine: dict = field(default_factory=dict)       # Config overrides for every engine process
    state_file: Path | None = None           # None = localllm.server.state.default_state_path()

    def __post_init__(self) -> None:
        if self.api_key == "":
            self.api_key = None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {self.max_queued}")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        check_keep_alive(self.keep_alive_s)
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"binding to {self.host}, which is not a loopback address, needs an API key "
                             f"(--api-key or ${env.API_KEY.name})")
        known = {f.name for f in fields(Config)} - _NOT_OVERRIDABLE
        unknown = sorted(set(self.engine) - known)
        if unknown:
            raise ValueError(f"unknown engine setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        self.engine_config()  # validates the values

    @classmethod
    def from_environment(cls, *, host: str | None = None, port: int | None = None, api_key: str | None = None,
                         cors_origins: list[str] = (), keep_alive_s: float | None = None,
                         max_queued: int | None = None, **given) -> "ServerSettings":
        """Settings from what was given (flags), the rest from the environment (localllm.settings)."""
        if host is None or port is None:
            address = env.daemon_address()
            host, port = host if host is not None else address.host, port if port is not None else address.port
        return cls(host=host, port=port,
                   api_key=api_key or env.api_key(), cors_origins=list(cors_origins) or env.cors_origins(),
                   keep_alive_s=keep_alive_s if keep_alive_s is not None else env.keep_alive_s(),
                   max_queued=max_queued if max_queued is not None else env.max_queued(), **given)

    def engine_config(self, model: str | None = None) -> Config:
        return Config(model=model, **self.engine)

    @property
    def max_num_seqs(self) -> int:
        return self.engine_config().max_num_seqs


def check_keep_alive(seconds: float) -> float:
    """A keep-alive duration the daemon can store, show and count down: finite and at most MAX_KEEP_ALIVE_S;
    negative means forever."""
    if not math.isfinite(seconds) or seconds > MAX_KEEP_ALIVE_S:
        raise ValueError(f"keep_alive must be a finite number of seconds, at most {MAX_KEEP_ALIVE_S:.0f} "
                         f"(a negative value keeps the model loaded forever), got {seconds}")
    return seconds


def parse_engine_overrides(items: list[str]) -> dict:
    """KEY=VALUE strings (as given on a command line) to Config overrides of the right types."""
    types = {f.name: f.type for f in fields(Config)}
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types or key in _NOT_OVERRIDABLE:
            raise ValueError(f"engine setting {item!r} is not KEY=VALUE with KEY one of: "
                             + ", ".join(sorted(set(types) - _NOT_OVERRIDABLE)))
        kind = str(types[key])
        try:
            if raw.lower() in ("none", "") and "None" in kind:
                value = None
            elif kind.startswith("bool"):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                value = raw.lower() in ("true", "1", "yes")
            elif kind.startswith("int"):
                value = int(raw)
            elif kind.startswith("float"):
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise ValueError(f"engine setting {key} wants a {kind.split(' ')[0]}, got {raw!r}") from None
        out[key] = value
    return out

