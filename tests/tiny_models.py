"""Tiny random-weight models built from transformers' real config classes, with a small byte-level BPE
tokenizer trained on the spot, saved as Hugging Face directories (no download)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen3Config)

TEXT = ["The quick brown fox jumps over the lazy dog.", "Paged attention keeps the KV cache in blocks.",
        "Continuous batching lets new prompts join while others decode.", "été, naïve, 日本語, 🙂"] * 20
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# unusual shapes on purpose: odd vocabularies, GQA groups of 2-5, head_dim not hidden/heads for Qwen3
CONFIGS = {
    "llama": lambda: LlamaConfig(
        vocab_size=331, hidden_size=64, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral": lambda: MistralConfig(
        vocab_size=317, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, sliding_window=12),
    "qwen2": lambda: Qwen2Config(
        vocab_size=301, hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5,
        num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True),
    "qwen3": lambda: Qwen3Config(
        vocab_size=307, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=1024, tie_word_embeddings=False),
}

# for tensor parallelism over 2 ranks: heads that split evenly, KV heads split (llama, qwen3) or fewer than the ranks
# and replicated (qwen2), odd vocabularies (the last rank's slice is padded), biases (qwen2), q/k norms (qwen3)
TP_CONFIGS = {
    "llama": CONFIGS["llama"],
    "qwen2": lambda: Qwen2Config(
        vocab_size=301, hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True),
    "qwen3": lambda: Qwen3Config(
        vocab_size=307, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=1024, tie_word_embeddings=False),
}


# A Llama whose every linear layer's inputs are whole groups of 128 (hidden 128, intermediate 256, head_dim 32), as
# the checkpoint formats quantized in groups of 128 (AWQ, GPTQ, FP8 tiles) need; its linear layers by name.
BLOCK128_CONFIGS = {"llama": lambda: LlamaConfig(
    vocab_size=311, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5)}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_tokenizer(vocab_size: int = 300, special_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """special_tokens: more special tokens (e.g. fill-in-the-middle ones), after <|im_start|> and <|im_end|>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<|im_start|>", "<|im_end|>", *special_tokens],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE)


def tokenizer_dirs_with_templates(base: Path, templates: dict[str, str]) -> dict[str, Path]:
    """One tokenizer directory per chat template (name -> template), beside `base`, the template written into its
    tokenizer_config.json."""
    build_tokenizer().save_pretrained(base)
    dirs = {}
    for name, template in templates.items():
        out = Path(shutil.copytree(base, base.parent / f"{base.name}-{name}"))
        (out / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((out / "tokenizer_config.json").read_text())
        config.update(chat_template=template, bos_token="<|im_start|>")
        (out / "tokenizer_config.json").write_text(json.dumps(config))
        dirs[name] = out
    return dirs


def build_model_dir(arch: str, out: Path, seed: int = 0, configs: dict = CONFIGS,
                    special_tokens: tuple[str, ...] = ()) -> Path:
    cfg = configs[arch]()
    tokenizer = build_tokenizer(special_tokens=special_tokens)
    cfg.eos_token_id = tokenizer.eos_token_id
    cfg.bos_token_id = None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # wider than the default 0.02 init so that logits are not near-ties
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.15)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


ST_MODES = {"last": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}


def build_embedding_model_dir(out: Path, mode: str = "last", normalize: bool = True, bare: bool = True,
                              seed: int = 0, config: dict | None = None) -> Path:
    """A tiny Qwen3 embedding model as sentence-transformers saves one (Qwen3-Embedding's layout): modules.json with
    Transformer, Pooling (`mode`) and optionally Normalize; the tokenizer appends its end token to every input.
    bare: the checkpoint holds the decoder alone (tensor names without "model.", no LM head), as Qwen3-Embedding's
    does; else a whole Qwen3ForCausalLM, which can also generate. `config`: entries added to config.json."""
    import json

    from tokenizers import processors

    build_model_dir("qwen3", out, seed)
    if bare:
        from transformers import AutoModel
        decoder = AutoModel.from_pretrained(out, dtype=torch.float32)
        for path in out.glob("*.safetensors"):
            path.unlink()
        decoder.save_pretrained(out)
    settings = json.loads((out / "config.json").read_text())
    settings.update({"architectures": ["Qwen3ForCausalLM"], **(config or {})})
    (out / "config.json").write_text(json.dumps(settings))
    tokenizer_file = out / "tokenizer.json"
    backend = Tokenizer.from_file(str(tokenizer_file))
    end = backend.token_to_id("<|im_end|>")
    backend.post_processor = processors.TemplateProcessing(single="$A <|im_end|>",
                                                           special_tokens=[("<|im_end|>", end)])
    backend.save(str(tokenizer_file))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir()
    flags = {flag: flag == ST_MODES[mode] for flag in ST_MODES.values()}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": settings["hidden_size"], "include_prompt": True, **flags}))
    return out


def hf_embeddings(model_dir: Path, texts: list[str], mode: str, normalize: bool) -> list[list[float]]:
    """transformers' AutoModel (the bare decoder) on each text alone, pooled as sentence-transformers pools."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vectors = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids).last_hidden_state[0]
        vector = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[mode]
        vectors.append(torch.nn.functional.normalize(vector, dim=0) if normalize else vector)
    return [v.tolist() for v in vectors]


def hf_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.generation_config.eos_token_id = None
    ids = torch.tensor([prompt_ids])
    # an explicit mask: otherwise generate() masks every prompt token equal to the pad id
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, min_new_tokens=max_new_tokens, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def _gguf_writer(path: Path, arch: str, hidden: int, ffn: int, layers: int, heads: int, kv_heads: int,
                 tokens: list[str], file_type, context_length: int = 2048, rope_theta: float | None = None):
    """A GGUFWriter with the model's metadata and a gpt2-style BPE vocabulary (its last token is the end of
    turn, "a b" its one merge) set; the caller adds the tensors and calls _finish."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    if rope_theta is not None:
        writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_chat_template("{{ messages[0]['content'] }}<|im_end|>")
    return writer


def _finish(writer, path: Path) -> Path:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_shapes(hidden: int, ffn: int, layers: int, q_rows: int, kv_rows: int, vocab: int,
                 tied: bool = True) -> dict:
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if not tied:
        shapes["output.weight"] = (vocab, hidden)
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
                       f"blk.{i}.attn_q.weight": (q_rows, hidden), f"blk.{i}.attn_k.weight": (kv_rows, hidden),
                       f"blk.{i}.attn_v.weight": (kv_rows, hidden), f"blk.{i}.attn_output.weight": (hidden, q_rows),
                       f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
                       f"blk.{i}.ffn_down.weight": (hidden, ffn)})
    return shapes


def write_tiny_gguf(path: Path, arch: str = "llama", quant: str = "F32", rope_theta: float | None = None,
                    rope_freqs=None, context_length: int = 2048) -> Path:
    """A one-layer GGUF (2 heads, 1 KV head, head_dim 16; F32, or Q8_0 weights) with a 4-token BPE vocabulary and a
    chat template; rope_freqs (a llama.cpp Llama-3 scaling tensor) is written when given."""
    import gguf
    import numpy as np

    hidden, ffn, rng = 32, 64, np.random.default_rng(0)
    tokens = ["a", "b", "ab", "<|im_end|>"]
    writer = _gguf_writer(path, arch, hidden, ffn, 1, 2, 1, tokens,
                          gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "Q8_0" else gguf.LlamaFileType.ALL_F32,
                          context_length, rope_theta)
    for name, shape in _gguf_shapes(hidden, ffn, 1, hidden, 16, len(tokens)).items():
        weight = rng.standard_normal(shape).astype(np.float32)
        if quant == "Q8_0" and len(shape) == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(weight, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, weight)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs)
    return _finish(writer, path)


# printable ASCII, "ab" (the one merge) and the end-of-turn token
QUANT_TOKENS = [chr(c) for c in range(33, 127)] + ["ab", "<|im_end|>"]


def write_quantized_gguf(path: Path, formats, arch: str = "llama", hidden: int = 256, ffn: int = 512,
                         layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0,
                         file_type: str = "MOSTLY_Q4_K_M", tied: bool = True) -> Path:
    """A GGUF whose matrices are in the block formats `formats(name)` gives (Q4_0, Q8_0, Q4_K, ...; F32 = dense),
    quantized with localllm's round-to-nearest quantizers (gguf can quantize only the 32-weight formats), with
    a 96-token vocabulary (and an output.weight unless tied). Weights ~ N(0, 0.15), wide enough that greedy
    choices are not near-ties."""
    import gguf
    import numpy as np

    from localllm.kernels.quantize_ref import quantize_ref

    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    writer = _gguf_writer(path, arch, hidden, ffn, layers, heads, kv_heads, QUANT_TOKENS,
                          gguf.LlamaFileType[file_type])
    shapes = _gguf_shapes(hidden, ffn, layers, hidden, kv_heads * head_dim, len(QUANT_TOKENS), tied)
    for name, shape in shapes.items():
        spread, center = (0.15, 0.0) if len(shape) == 2 else (0.1, 1.0)   # norms near 1
        weight = (rng.standard_normal(shape) * spread + center).astype(np.float32)
        fmt = formats(name) if len(shape) == 2 else "F32"
        if fmt == "F32":
            writer.add_tensor(name, weight)
        else:
            blocks = quantize_ref(torch.from_numpy(weight), fmt).numpy()
            writer.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType[fmt])
    return _finish(writer, path)
