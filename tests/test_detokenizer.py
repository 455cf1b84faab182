import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from localllm.engine.detokenizer import IncrementalDetokenizer

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Un café au lait, s'il vous plaît. Élise a été là.",
    "日本語のテキストです。日本は島国です。",
    "Party time 🎉🎉 rocket 🚀 and a heart ❤️ for everyone.",
    "Stop sequences like ### or </answer> end the output early.",
] * 3

TEXTS = [
    "The cat sat on the mat.",
    "Un café au lait à Paris, été 2024",
    "日本語のテキスト 日本",
    "rocket 🚀🚀 party 🎉 ❤️ done",
    "  leading spaces and trailing  ",
    "mixed: é日🎉e\u0301 end",
]


def train(pre_tokenizer, decoder, vocab_size: int, **trainer_options) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"], show_progress=False,
                                  **trainer_options)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


@pytest.fixture(scope="module")
def byte_level():
    # A small vocabulary leaves multi-byte characters split over several byte tokens.
    return train(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), 300,
                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


@pytest.fixture(scope="module")
def metaspace():
    # SentencePiece style: words start with "▁", and decoding drops the first token's leading space.
    return train(pre_tokenizers.Metaspace(), decoders.Metaspace(), 200)


@pytest.fixture(params=["byte_level", "metaspace"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def stream(tokenizer, ids, stop=(), skip_special_tokens=True):
    """Feeds ids one by one; returns (deltas, index of the token that hit a stop string or None)."""
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens, list(stop))
    deltas = []
    for i, token_id in enumerate(ids):
        delta, stopped = detokenizer.append(token_id)
        deltas.append(delta)
        if stopped:
            assert detokenizer.text == "".join(deltas)
            return deltas, i
    deltas.append(detokenizer.flush())
    assert detokenizer.text == "".join(deltas)
    return deltas, None


def piece_starts(tokenizer, ids) -> list[int]:
    """Character offset where each token's text starts in the full decode (for ASCII text)."""
    return [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


# --- decoding ---------------------------------------------------------------------------------

def test_byte_level_tokenizer_really_splits_characters(byte_level):
    ids = byte_level.encode("🚀")
    assert len(ids) > 1 and "\ufffd" in byte_level.decode(ids[:1])


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_to_the_full_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    deltas, stopped_at = stream(tokenizer, ids)
    assert stopped_at is None
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in delta for delta in deltas)


def test_words_keep_their_leading_space(metaspace):
    ids = metaspace.encode("The dog sat on the log")
    assert not metaspace.decode(ids[1:2]).startswith(" ")  # alone, a word token loses its space
    deltas, _ = stream(metaspace, ids)
    assert "".join(deltas) == "The dog sat on the log"


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_special_tokens_in_the_middle(tokenizer, skip_special_tokens):
    eos = tokenizer.convert_tokens_to_ids("<eos>")
    ids = tokenizer.encode("The cat sat") + [eos, eos] + tokenizer.encode(" on the mat 日本") + [eos]
    deltas, _ = stream(tokenizer, ids, skip_special_tokens=skip_special_tokens)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_an_unfinished_character_comes_out_at_flush(byte_level):
    ids = byte_level.encode("ok 🚀")[:-1]  # the rocket's last byte never arrives
    deltas, _ = stream(byte_level, ids)
    assert deltas[-1] != "" and "".join(deltas) == byte_level.decode(ids)


def test_decodes_only_a_small_window_per_token(byte_level):
    windows = []

    class Recording:
        def decode(self, ids, skip_special_tokens):
            windows.append(len(ids))
            return byte_level.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = byte_level.encode(" ".join(TEXTS) * 20)
    deltas, _ = stream(Recording(), ids)
    assert "".join(deltas) == byte_level.decode(ids)
    assert max(windows) <= 8 and len(windows) <= 2 * len(ids) + 1


# --- stop strings -----------------------------------------------------------------------------

def assert_never_leaks(deltas, expected):
    shown = ""
    for delta in deltas:
        shown += delta
        assert expected.startswith(shown)
    assert shown == expected


@pytest.mark.parametrize("spanned", [2, 3])
def test_stop_string_across_token_boundaries(tokenizer, spanned):
    text = "The dog sat on the log. The cat sat on the mat."
    ids = tokenizer.encode(text)
    starts = piece_starts(tokenizer, ids)
    assert tokenizer.decode(ids) == text
    # From the second character of a token into the first character of the token `spanned - 1`
    # further on; the token is past the first sentence so the stop string is not found earlier.
    first = next(i for i in range(len(ids) - spanned)
                 if starts[i] > text.index("The cat") and starts[i + 1] - starts[i] >= 2)
    last = first + spanned - 1
    stop = text[starts[first] + 1:starts[last] + 1]
    assert text.find(stop) == starts[first] + 1

    deltas, stopped_at = stream(tokenizer, ids, stop=[stop])
    assert stopped_at == last
    assert_never_leaks(deltas, text[:starts[first] + 1])


def test_stop_string_inside_a_single_token(tokenizer):
    text = "The cat sat on the mat."
    ids = tokenizer.encode(text)
    deltas, _ = stream(tokenizer, ids, stop=["at"])
    assert_never_leaks(deltas, "The c")


def test_stop_string_with_multibyte_characters(byte_level):
    text = "Un café au lait à Paris, été 2024"
    deltas, stopped_at = stream(byte_level, byte_level.encode(text), stop=["été"])
    assert stopped_at is not None
    assert_never_leaks(deltas, "Un café au lait à Paris, ")


def test_partial_stop_string_that_never_completes_comes_out_at_flush(tokenizer):
    text = "The cat sat on the ma"
    deltas, stopped_at = stream(tokenizer, tokenizer.encode(text), stop=["the mat"])
    assert stopped_at is None
    assert "".join(deltas) == text
    assert not "".join(deltas[:-1]).endswith(("t", "th", "the", "the ", "the m", "the ma"))
    assert deltas[-1].endswith("the ma")


def test_partial_stop_string_is_released_once_it_diverges(tokenizer):
    text = "The cat sat on the log. The dog"
    deltas, stopped_at = stream(tokenizer, tokenizer.encode(text), stop=["the mat"])
    assert stopped_at is None
    assert_never_leaks(deltas, text)
    assert "the log" in "".join(deltas[:-1])  # released before the end, not only at flush


def test_earliest_stop_string_wins(tokenizer):
    text = "The cat sat on the mat."
    deltas, _ = stream(tokenizer, tokenizer.encode(text), stop=["mat", "on the", "sat"])
    assert_never_leaks(deltas, "The cat ")


class Pieces:
    """A tokenizer whose token i is the fixed string PIECES[i], for cases a real BPE can't stage."""
    PIECES = ["xx", "abcd", "e"]

    def decode(self, ids, skip_special_tokens):
        return "".join(self.PIECES[i] for i in ids)


def test_earliest_start_wins_when_one_token_completes_several_stop_strings():
    deltas, stopped_at = stream(Pieces(), [0, 1, 2], stop=["bcd", "abc"])
    assert stopped_at == 1 and deltas == ["xx", ""]


def test_no_append_after_a_stop_string():
    detokenizer = IncrementalDetokenizer(Pieces(), True, ["abc"])
    assert detokenizer.append(0) == ("xx", False)
    assert detokenizer.append(1) == ("", True)
    assert detokenizer.text == "xx"
    assert detokenizer.flush() == ""
    with pytest.raises(RuntimeError):
        detokenizer.append(2)
