"""A model directory's tokenizer, read with the `tokenizers` library alone: tokenizer.json for the ids,
tokenizer_config.json for the special tokens, and the chat template (chat_template.jinja and
additional_chat_templates/ first, as transformers reads them). Encoding, decoding and the chat prompt come out
as transformers' tokenizer gives them for such a directory, without importing transformers or torch, so the
daemon's front end stays light. Method names follow transformers' where they overlap."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from localllm.errors import CorruptModelError, first_line
from localllm.loader.chat_template import SPECIAL_TOKEN_NAMES, render_chat


class Tokenizer:
    def __init__(self, backend: Backend, special_tokens: dict[str, str], chat_template: str | dict | None):
        self.backend_tokenizer = backend
        self.special_tokens_map = special_tokens              # e.g. {"eos_token": "<|im_end|>"}
        self.chat_template = chat_template                    # one template, or several by name

    @classmethod
    def from_dir(cls, model_dir: Path) -> Tokenizer:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise CorruptModelError(f"cannot load the tokenizer in {model_dir}: it has no tokenizer.json")
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception for a malformed file
            raise CorruptModelError(f"cannot load the tokenizer in {model_dir}: {first_line(e)}") from None
        config = _json(model_dir / "tokenizer_config.json")
        special = {**_json(model_dir / "special_tokens_map.json"), **config}
        special_tokens = {name: _content(special[name]) for name in SPECIAL_TOKEN_NAMES
                          if special.get(name) is not None}
        return cls(backend, special_tokens, chat_template_of(model_dir, config))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL while it works (encode holds it): the daemon's other threads, its event
        # loop included, go on while a long prompt is tokenized
        return self.backend_tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend_tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        return self.backend_tokenizer.id_to_token(token_id)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend_tokenizer.token_to_id(token)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self.backend_tokenizer.get_added_tokens_decoder()

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special_tokens_map.get("eos_token")
        return None if eos is None else self.convert_tokens_to_ids(eos)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            tools: list[dict] | None = None, **template_kwargs) -> str:
        """The prompt text of a conversation (tokenize it with encode(text, add_special_tokens=False))."""
        return render_chat(self.template_text(), messages, add_generation_prompt, self.special_tokens_map,
                           tools=tools, **template_kwargs)

    def template_text(self) -> str:
        """The chat template apply_chat_template renders: the only one, or the one named 'default'."""
        template = self.chat_template
        if isinstance(template, dict):
            if "default" not in template:
                raise ValueError(f"the model has several chat templates ({', '.join(sorted(template))}) "
                                 "and none is named 'default'")
            template = template["default"]
        if not template:
            raise ValueError("the model has no chat template")
        return template


def chat_template_of(model_dir: Path, config: dict) -> str | dict | None:
    """Template files take priority over the tokenizer config's entry; several templates are keyed by name."""
    templates = {}
    if (model_dir / "chat_template.jinja").is_file():
        templates["default"] = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    for path in sorted((model_dir / "additional_chat_templates").glob("*.jinja")):
        templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if templates:
        return templates["default"] if list(templates) == ["default"] else templates
    template = config.get("chat_template")
    if isinstance(template, list):   # the config's form of several templates
        return {t["name"]: t["template"] for t in template}
    return template


def _content(token) -> str:
    """A special token as a config names it: a string, or an AddedToken's fields."""
    return token["content"] if isinstance(token, dict) else str(token)


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorruptModelError(f"{path} is not valid JSON: {e}") from None
