"""The front end's tokenizer (tokenizers + our chat template renderer, no transformers) gives exactly what
transformers' AutoTokenizer gives for the same model directory: the same prompt text for every conversation and
template, the same ids, the same decode.

The templates below are written for these tests in the styles of the families the aliases table points at
(ChatML with a default system prompt, Qwen with tools and thinking, Llama 3 with dates, Mistral's [INST] with
role checks); the real files of those repos cannot be fetched here. The embedded model's template is the real one."""
from __future__ import annotations

import json
import shutil

import jinja2
import pytest
from transformers import AutoTokenizer

from localllm.loader.resolve import resolve_model
from localllm.loader.tokenizer import Tokenizer
from tiny_models import tokenizer_dirs_with_templates

QWEN_STYLE = """
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
        {%- continue %}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>' + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3_STYLE = """
{%- set ns = namespace(last_query=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if message.role == "user" and ns.last_query == messages|length - 1 %}
        {%- set ns.last_query = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content %}
    {%- if message.role == "assistant" and '</think>' in content %}
        {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + content }}
    {%- if loop.index0 == ns.last_query %}{{ ' (last question)' }}{% endif %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

LLAMA3_STYLE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- {"meta": {"tags": ["<b>", "&", "é"]}, "n": 1} | tojson(indent=4) }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role not in ['user', 'assistant'] %}
        {{- raise_exception('Unknown role ' + message.role) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL_STYLE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] + '\\n\\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last %}{{ '[INST] ' + system + message['content'] + '[/INST]' }}
        {%- else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}
    {%- elif message['role'] == 'assistant' %}
        {% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}
    {%- endif %}
{%- endfor %}
"""

# the tiny tokenizer's special tokens stand in for each family's
TEMPLATES = {"qwen": QWEN_STYLE, "qwen3": QWEN3_STYLE, "llama3": LLAMA3_STYLE, "mistral": MISTRAL_STYLE}

SYSTEM = {"role": "system", "content": "You answer in one word. <b>Bold</b> & \"quoted\"."}
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system and user": [SYSTEM, {"role": "user", "content": "  Name a colour.  "}],
    "multi-turn": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "été, naïve, 日本語, 🙂?"}],
    "multi-turn with thinking": [{"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "<think>\nadd</think>\n\n4"},
                                 {"role": "user", "content": "And 3+3?"}],
}


def assert_same(ours: Tokenizer, theirs, conversation: list[dict], **kwargs) -> None:
    for add_generation_prompt in (False, True):
        expected = theirs.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                              tokenize=False, **kwargs)
        text = ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, **kwargs)
        assert text == expected
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def embedded_dir():
    return resolve_model("smollm2:135m")


@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_embedded_model_renders_as_transformers(embedded_dir, conversation):
    assert_same(Tokenizer.from_dir(embedded_dir), AutoTokenizer.from_pretrained(embedded_dir), conversation)


def test_embedded_model_tokenizes_and_decodes_as_transformers(embedded_dir):
    ours, theirs = Tokenizer.from_dir(embedded_dir), AutoTokenizer.from_pretrained(embedded_dir)
    text = "Paged attention <|im_start|> keeps été 日本語 🙂 in blocks.<|im_end|>"
    for add_special_tokens in (False, True):
        ids = ours.encode(text, add_special_tokens=add_special_tokens)
        assert ids == theirs.encode(text, add_special_tokens=add_special_tokens)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.eos_token_id == theirs.eos_token_id == 2
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert [ours.convert_ids_to_tokens(i) for i in ids] == theirs.convert_ids_to_tokens(ids)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """One tokenizer directory per template, the template written into tokenizer_config.json."""
    return tokenizer_dirs_with_templates(tmp_path_factory.mktemp("tokenizer"), TEMPLATES)


@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
@pytest.mark.parametrize("family", [f for f in TEMPLATES if f != "mistral"])
def test_templates_render_as_transformers(tiny_dirs, family, conversation):
    assert_same(Tokenizer.from_dir(tiny_dirs[family]), AutoTokenizer.from_pretrained(tiny_dirs[family]), conversation)


def test_template_arguments_reach_the_template(tiny_dirs):
    ours, theirs = Tokenizer.from_dir(tiny_dirs["qwen3"]), AutoTokenizer.from_pretrained(tiny_dirs["qwen3"])
    assert_same(ours, theirs, CONVERSATIONS["one user turn"], enable_thinking=False)
    assert "<think>" in ours.apply_chat_template(CONVERSATIONS["one user turn"], True, enable_thinking=False)
    ours, theirs = Tokenizer.from_dir(tiny_dirs["llama3"]), AutoTokenizer.from_pretrained(tiny_dirs["llama3"])
    assert_same(ours, theirs, CONVERSATIONS["system and user"], date_string="26 Jul 2024")


def test_mistral_style_alternation_and_generation_tag(tiny_dirs):
    ours, theirs = Tokenizer.from_dir(tiny_dirs["mistral"]), AutoTokenizer.from_pretrained(tiny_dirs["mistral"])
    for name in ("one user turn", "system and user", "multi-turn"):
        assert_same(ours, theirs, CONVERSATIONS[name])
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        theirs.apply_chat_template(two_users, tokenize=False)
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        ours.apply_chat_template(two_users)


def test_template_files_take_priority_and_several_templates_pick_the_default(tiny_dirs, tmp_path):
    out = shutil.copytree(tiny_dirs["qwen"], tmp_path / "files")
    (out / "chat_template.jinja").write_text(QWEN3_STYLE)
    (out / "additional_chat_templates").mkdir()
    (out / "additional_chat_templates" / "tool_use.jinja").write_text(LLAMA3_STYLE)
    ours, theirs = Tokenizer.from_dir(out), AutoTokenizer.from_pretrained(out)
    assert ours.chat_template == theirs.chat_template == {"default": QWEN3_STYLE, "tool_use": LLAMA3_STYLE}
    assert_same(ours, theirs, CONVERSATIONS["multi-turn"])


@pytest.mark.parametrize("template", ["{{ messages.append(1) }}", "{% set ns = namespace(_x=1) %}"])
def test_sandbox_refuses_what_transformers_refuses(tiny_dirs, tmp_path, template):
    out = shutil.copytree(tiny_dirs["qwen"], tmp_path / "escape")
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(jinja2.exceptions.SecurityError):
        AutoTokenizer.from_pretrained(out).apply_chat_template(CONVERSATIONS["one user turn"], tokenize=False)
    with pytest.raises(jinja2.exceptions.SecurityError):
        Tokenizer.from_dir(out).apply_chat_template(CONVERSATIONS["one user turn"])
