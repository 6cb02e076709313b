"""The book's word tokenizer (chapter 2) and the character-level tokenizer."""

from __future__ import annotations

import pytest

from gptlab.errors import GptlabError
from gptlab.tokenizer import CharTokenizer, SimpleTokenizer, get_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def verdict(shared_data) -> str:
    return (shared_data / "the-verdict.txt").read_text(encoding="utf-8")


def test_book_vocabulary_sizes(verdict):
    tok = SimpleTokenizer.from_text(verdict)
    assert len(tok.words) == 1130  # the book: 1,130 distinct words and punctuation marks
    assert tok.n_vocab == 1132  # plus <|endoftext|> and <|unk|>


def test_book_v1_example(verdict):
    tok = SimpleTokenizer.from_text(verdict)
    text = """"It's the last he painted, you know," Mrs. Gisburn said with pardonable pride."""
    ids = tok.encode(text)
    assert ids == [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793, 7]
    assert tok.decode(ids) == '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'


def test_book_v2_example_with_unknown_words(verdict):
    tok = SimpleTokenizer.from_text(verdict)
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace."
    ids = tok.encode(text)
    assert ids == [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]
    assert tok.decode(ids) == "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."


def test_simple_save_load(verdict, tmp_path):
    tok = SimpleTokenizer.from_text(verdict)
    tok.save(tmp_path / "s.json")
    again = load_tokenizer(tmp_path / "s.json")
    text = "I had always thought Jack Gisburn rather a cheap genius"
    assert again.encode(text) == tok.encode(text)


def test_char_tokenizer_on_tinyshakespeare(shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = get_tokenizer("char", corpus=text)
    assert tok.chars == "".join(sorted(set(text)))
    assert len(tok.chars) == 65  # nanoGPT's shakespeare_char vocabulary
    assert tok.n_vocab == 66 and tok.eot_id == 65
    sample = text[:1000]
    ids = tok.encode(sample)
    assert ids == [tok.chars.index(c) for c in sample]
    assert tok.decode(ids) == sample
    assert tok.encode("ab<|endoftext|>", allowed_special="all") == [tok.chars.index("a"), tok.chars.index("b"), 65]


def test_char_unknown_character_error_and_unk():
    tok = CharTokenizer("abc")
    with pytest.raises(GptlabError, match="'z'"):
        tok.encode("abz")
    tok = CharTokenizer("abc", special_tokens=("<|endoftext|>", "<|unk|>"), unk="<|unk|>")
    assert tok.encode("abz") == [0, 1, 4]


def test_char_save_load(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    tok.save(tmp_path / "c.json")
    again = load_tokenizer(tmp_path / "c.json")
    assert again.encode("hello") == tok.encode("hello") and again.n_vocab == tok.n_vocab


def test_get_tokenizer_errors(tmp_path):
    with pytest.raises(GptlabError, match="corpus"):
        get_tokenizer("char")
    with pytest.raises(GptlabError, match="unknown tokenizer"):
        get_tokenizer("no-such-tokenizer")
    with pytest.raises(GptlabError, match="empty text"):
        CharTokenizer.from_text("")
