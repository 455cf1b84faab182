"""The Ollama API's view of models: names as its clients write them mapped onto ours, and the entries of
/api/tags, /api/show and /api/ps, built from the store, the model files' headers (read once per file version)
and what the engines report. Everything here reads files: the routes call it in a thread."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from localllm.architectures import BY_HF_CLASS
from localllm.errors import LocalLLMError
from localllm.hub import store
from localllm.hub.embedded import EMBEDDED_ALIAS, stored_gguf
from localllm.hub.model_info import describe
from localllm.server.errors import APIError
from localllm.server.models import ModelManager
from localllm.server.ollama_schemas import DEFAULT_OPTIONS
from localllm.server.settings import MAX_KEEP_ALIVE_S
from localllm.units import format_count

log = logging.getLogger("localllm.server")
_HUB_PREFIXES = ("hf.co/", "huggingface.co/")
_LATEST = ":latest"
# config.json keys -> Ollama's model_info keys (after "<family>."), for models that are not GGUF files
_CONFIG_KEYS = {"max_position_embeddings": "context_length", "hidden_size": "embedding_length",
                "num_hidden_layers": "block_count", "intermediate_size": "feed_forward_length",
                "num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
                "rms_norm_eps": "attention.layer_norm_rms_epsilon", "rope_theta": "rope.freq_base",
                "vocab_size": "vocab_size"}


def local_name(name: str) -> str:
    """A name as an Ollama client writes it, in our terms: Ollama names a Hub repo hf.co/owner/name, and adds
    the tag ":latest" to a name that has none."""
    text = name.strip()
    for prefix in _HUB_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    return text[:-len(_LATEST)] if text.lower().endswith(_LATEST) else text


def not_found(name: str) -> APIError:
    return APIError(404, f"model '{name}' not found", param="model", code="model_not_found")


def find(manager: ModelManager, name: str | None) -> str:
    """Our name of the model a request names; 400 without one, 404 for a model this daemon cannot serve."""
    if not name:
        raise APIError(400, "model is required", param="model", code="missing_required_parameter")
    found = manager.lookup(name) or manager.lookup(local_name(name))
    if found is None:
        raise not_found(name)
    return found[0]


# --- what the files say ----------------------------------------------------------------------------------
def _files(manager: ModelManager, name: str) -> tuple[Path | None, store.ModelEntry | None]:
    """The model's file or directory here (None: the embedded model is not fetched yet) and its store entry."""
    found = manager.lookup(name)
    spec = found[1] if found else name
    path = stored_gguf() if spec == EMBEDDED_ALIAS else Path(spec)
    try:
        entry = store.find(name)
    except LocalLLMError:   # an unreadable store: described from the files alone
        entry = None
    return path, entry


@functools.lru_cache(maxsize=64)
def _described(path: str, mtime_ns: int, size: int) -> dict:
    return describe(Path(path), with_metadata=True)


def _describe(path: Path) -> dict:
    stat = path.stat()
    return _described(str(path), stat.st_mtime_ns, stat.st_size)


def _family(info: dict) -> str:
    if "general.architecture" in info["metadata"]:
        return str(info["metadata"]["general.architecture"])
    architecture = BY_HF_CLASS.get(info["architecture"])
    return info["metadata"].get("model_type") or (architecture.model_type if architecture else info["architecture"])


def details(path: Path, info: dict) -> dict:
    family = _family(info)
    return {"parent_model": "", "format": "gguf" if path.is_file() else "safetensors", "family": family,
            "families": [family], "parameter_size": format_count(info["parameters"]),
            "quantization_level": info["format"]}


def _digest(path: Path, entry: store.ModelEntry | None) -> str:
    """A stable id of this version of the model (Ollama's is its manifest's sha256): the Hub commit it came
    from, else the file's identity."""
    if entry is not None and entry.revision:
        identity = f"{entry.ref}@{entry.revision}"
    else:
        stat = path.stat()
        identity = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _summary(name: str, path: Path, entry: store.ModelEntry | None) -> dict:
    info = _describe(path)
    return {"name": name, "model": name,
            "modified_at": entry.modified if entry else _iso(path.stat().st_mtime),
            "size": entry.size if entry else sum(f["size"] for f in info["files"]),
            "digest": _digest(path, entry), "details": details(path, info)}


# --- the routes' answers ---------------------------------------------------------------------------------
def tags(manager: ModelManager, names: list[str]) -> dict:
    """Those of `names` (what the daemon may serve) whose files are here (an embedded model not fetched yet
    is not)."""
    models = []
    for name in names:
        path, entry = _files(manager, name)
        if path is None:
            continue
        try:
            models.append(_summary(name, path, entry))
        except (OSError, LocalLLMError) as e:   # files gone or unreadable: listed by /v1/models, not here
            log.warning("cannot describe model %s: %s", name, e)
    return {"models": models}


def show(manager: ModelManager, name: str) -> dict:
    path, entry = _files(manager, name)
    if path is None:
        raise APIError(404, f"model '{name}' is not fetched yet; pull it first", param="model",
                       code="model_not_found")
    try:
        info = _describe(path)
    except (OSError, LocalLLMError) as e:
        raise APIError(404, f"model '{name}' cannot be read: {e}", param="model", code="model_not_found") from None
    parameters = "\n".join(f"{key:<30} {value}" for key, value in DEFAULT_OPTIONS.items())
    return {
        "modelfile": f"# Modelfile generated by localllm\nFROM {path}\n"
                     + "".join(f"PARAMETER {key} {value}\n" for key, value in DEFAULT_OPTIONS.items()),
        "parameters": parameters,
        "template": _template(path, info) or "",
        "details": details(path, info),
        "model_info": _model_info(path, info),
        "capabilities": ["embedding"] if _embeds(path) else ["completion"],
        "modified_at": entry.modified if entry else _iso(path.stat().st_mtime),
    }


def _embeds(path: Path) -> bool:
    """Whether the model is an embedding model (one with a sentence-transformers pooling config)."""
    from localllm.loader.pooling_config import read_pooling_config

    try:
        return path.is_dir() and read_pooling_config(path) is not None
    except LocalLLMError:   # pooling this engine does not run: not an embedding model it serves
        return False


def _template(path: Path, info: dict) -> str | None:
    if path.is_file():
        return info["metadata"].get("tokenizer.chat_template")
    from localllm.loader.tokenizer import chat_template_of

    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    template = chat_template_of(path, config)
    return template.get("default") if isinstance(template, dict) else template


def _model_info(path: Path, info: dict) -> dict:
    """GGUF keys, as Ollama shows them: a GGUF's own scalars (arrays empty, as Ollama leaves them unless
    verbose), or a config.json's values under the GGUF names."""
    family, metadata = _family(info), info["metadata"]
    out = {"general.architecture": family, "general.parameter_count": info["parameters"]}
    if path.is_file():
        for key, value in metadata.items():
            if key == "tokenizer.chat_template":
                continue
            if key.endswith(".length"):
                out[key[:-len(".length")]] = []   # an array's length, as model_info.read_gguf_header keeps it
            else:
                out.setdefault(key, value)
        return out
    for config_key, suffix in _CONFIG_KEYS.items():
        if metadata.get(config_key) is not None:
            out[f"{family}.{suffix}"] = metadata[config_key]
    return out


def ps(manager: ModelManager, statuses: list[dict]) -> dict:
    """The loaded models, from their `statuses` (ModelManager.status, read on the loop)."""
    models = []
    for status in statuses:
        name = status["name"]
        path, entry = _files(manager, name)
        entry_info = _summary(name, path, entry) if path is not None else {"digest": "", "details": {}}
        gpus = status.get("gpus") or []
        models.append({
            "name": name, "model": name, "size": status.get("memory_bytes") or 0,
            "digest": entry_info["digest"], "details": entry_info["details"], "expires_at": _expires_at(status),
            "size_vram": sum(g["weight_bytes"] + g["kv_cache_bytes"] for g in gpus),
            "context_length": status.get("context_length") or 0,
        })
    return {"models": models}


def _expires_at(status: dict) -> str:
    """When the model will be unloaded: its idle deadline; while it is in use or loading, its keep-alive from
    now; kept forever, the farthest keep-alive there is."""
    if status.get("keep_alive_until"):
        return status["keep_alive_until"]
    seconds = MAX_KEEP_ALIVE_S if status.get("keep_alive_forever") else (status.get("keep_alive_s") or 0)
    return _iso(time.time() + seconds)
