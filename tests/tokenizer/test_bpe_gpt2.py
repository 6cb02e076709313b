"""GPT-2's tokenizer, written here, against tiktoken (the reference) and the book's printed values."""

from __future__ import annotations

import base64
import shutil
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab.errors import GptlabError
from gptlab.tokenizer import BPETokenizer, CharTokenizer, get_tokenizer, load_tokenizer

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return get_tokenizer("gpt2")


# ----------------------------------------------------------------------------- the book's values
def test_book_hello_example(gpt2):
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace."
    assert gpt2.encode(text, allowed_special={EOT}) == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554,
        262, 4252, 18250, 8812, 2114, 1659, 617, 34680, 27271, 13,
    ]  # fmt: skip


def test_the_verdict_token_count(gpt2, shared_data):
    assert len(gpt2.encode((shared_data / "the-verdict.txt").read_text(encoding="utf-8"))) == 5145


def test_vocabulary_size(gpt2):
    assert gpt2.n_vocab == 50257 and gpt2.eot_id == 50256


# ----------------------------------------------------------------------------- tiktoken parity
@pytest.mark.parametrize(
    "name",
    ["the-verdict.txt", "tinyshakespeare.txt", "sotu.txt", "SMSSpamCollection.tsv", "instruction-data.json"],
)
def test_identical_to_tiktoken_on_shared_data(gpt2, tiktoken_gpt2, shared_data, name):
    text = (shared_data / name).read_text(encoding="utf-8")
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


_PIECES = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2028",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'x", "’s",
    "hello", " world", "Don't", "HELLO", "naïve", "café", "e\u0301", "a\u0308\u0301",
    "0", "12", " 345", "١٢٣", "½", "Ⅻ", "3.14", "1,000",
    "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "中文", "日本語", "한국어", "ñ", "Ωμέγα", "привет", "עברית", "العربية",
    "!", "?!", "...", "--", " #", "$", "@@", "^", "~~~", "\x00", "\x1c", "\x7f", "\ufffd",
    EOT, "<|endoftext", "|>", "<|fim|>",
]


def _texts():
    pieces = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join)
    mixed = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=20).map("".join)
    return st.one_of(st.text(), pieces, mixed)


_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(text=_texts())
def test_ordinary_matches_tiktoken_and_round_trips(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode_ordinary(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text


@_SETTINGS
@given(text=_texts())
def test_special_handling_matches_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, disallowed_special=()) == tiktoken_gpt2.encode(text, disallowed_special=())
    if EOT in text:
        with pytest.raises(ValueError):
            tiktoken_gpt2.encode(text)
        with pytest.raises(GptlabError, match="endoftext"):
            gpt2.encode(text)
    else:
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text)


def test_every_code_point_matches_tiktoken(gpt2, tiktoken_gpt2, code_points):
    """Each Unicode scalar value in contexts that tell letters, numbers, symbols and spaces apart.

    A character's class decides where pieces end: "X's" splits after X only if X is a letter, "aX"
    is one piece only if X is a letter too, and so on. (This is how a Unicode-version difference
    between the regex module and tiktoken's engine was found; see bpe_pattern.py.)
    """
    chars = code_points
    for i in range(0, len(chars), 4096):
        block = chars[i : i + 4096]
        text = " ".join(f"{c}'s a{c} 1{c} {c}! \n{c}" for c in block)
        assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text), hex(ord(block[0]))


def test_lone_surrogates_are_replaced_like_tiktoken(gpt2, tiktoken_gpt2):
    text = "ab\ud800cd \udfff"
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text)


def test_decode_invalid_utf8_uses_replacement_char(gpt2, tiktoken_gpt2):
    ids = gpt2.encode("😀")
    assert len(ids) > 1
    assert gpt2.decode(ids[:1]) == tiktoken_gpt2.decode(ids[:1])
    assert gpt2.decode_bytes(ids[:1]) == tiktoken_gpt2.decode_bytes(ids[:1])


def test_unknown_id_in_decode(gpt2):
    with pytest.raises(GptlabError, match="50257"):
        gpt2.decode([1, 50257])


# ----------------------------------------------------------------------------- pathological input
@pytest.mark.parametrize("text", ["a" * 100_000, "^" * 1_000_000, " " * 100_000 + "x", "ab1" * 30_000])
def test_long_pieces_are_near_linear(gpt2, tiktoken_gpt2, text):
    """Encoding 4x the text takes about 4x the time, not 16x (a quadratic merge loop).

    Compared within the run (a quarter of the text as the reference), so a busy or slow machine does
    not fail it; the best of two timings each smooths out a scheduler hiccup.
    """

    def best_time(piece: str) -> float:
        times = []
        for _ in range(2):
            gpt2._cache.clear()
            start = time.perf_counter()
            gpt2.encode_ordinary(piece)
            times.append(time.perf_counter() - start)
        return min(times)

    quarter = best_time(text[: len(text) // 4])
    full = best_time(text)
    assert full < 8 * quarter + 0.05, f"4x the text took {full / quarter:.1f}x the time ({quarter:.3f}s -> {full:.3f}s)"
    gpt2._cache.clear()
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


def test_long_piece_algorithm_agrees_with_short_one(gpt2):
    from gptlab.tokenizer.merge import merge_long, merge_short

    for word in ["internationalization", "aaaaaaaaaaaaaaaaaaaaa", " hello", "🙂🙂🙂", "x" * 47 + "y"]:
        data = word.encode()
        assert merge_long(data, gpt2.mergeable_ranks) == merge_short(data, gpt2.mergeable_ranks)


def test_mixed_ascii_and_unicode_blocks_split_exactly(gpt2, tiktoken_gpt2, shared_data):
    """Long text with scattered non-ASCII characters takes the mixed fast path; ids must not change."""
    base = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    inserts = ["é", " ñ", "\u00a0", "😀 ", "\u3000x", "中", "\u2028", " \u0301"]
    pieces = []
    for i, chunk in enumerate(base.split(" ")):
        pieces.append(chunk)
        if i % 37 == 0:
            pieces.append(inserts[i % len(inserts)])
    text = " ".join(pieces)
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


# ----------------------------------------------------------------------------- special tokens
def test_disallowed_special_error_names_the_token(gpt2):
    with pytest.raises(GptlabError, match=r"<\|endoftext\|>.*allowed_special"):
        gpt2.encode("hi <|endoftext|>")


def test_unknown_allowed_special_is_an_error(gpt2):
    with pytest.raises(GptlabError, match="not special tokens"):
        gpt2.encode("hi", allowed_special={"<|nope|>"})


# ----------------------------------------------------------------------------- persistence
def test_save_and_load_round_trip(gpt2, tmp_path, tiktoken_gpt2):
    path = tmp_path / "tok.json"
    gpt2.save(path)
    again = load_tokenizer(path)
    assert again.mergeable_ranks == gpt2.mergeable_ranks
    assert again.special_tokens == gpt2.special_tokens and again.pattern == gpt2.pattern
    text = "Round trip, 'twas brillig… 123 🙂"
    assert again.encode(text) == tiktoken_gpt2.encode(text)


def test_tiktoken_format_is_read_by_tiktoken(gpt2, tmp_path, tiktoken_gpt2):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    path = tmp_path / "gpt2.tiktoken"
    gpt2.save(path, format="tiktoken")
    ranks = load_tiktoken_bpe(str(path))
    assert ranks == tiktoken_gpt2._mergeable_ranks
    enc = tiktoken.Encoding("x", pat_str=gpt2.pattern, mergeable_ranks=ranks, special_tokens=gpt2.special_tokens)
    assert enc.encode("Hello, world") == [15496, 11, 995]
    assert BPETokenizer.load(path).encode("Hello, world") == [15496, 11, 995]


# ----------------------------------------------------------------------------- bad vocabulary files
@pytest.fixture()
def vocab_copy(tmp_path, shared_data):
    folder = tmp_path / "gpt2"
    shutil.copytree(shared_data / "gpt2", folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    return folder


def test_truncated_encoder_json(vocab_copy):
    enc = vocab_copy / "encoder.json"
    enc.write_bytes(enc.read_bytes()[:5000])
    with pytest.raises(GptlabError, match="encoder.json"):
        BPETokenizer.from_gpt2(vocab_copy)


def test_truncated_vocab_bpe(vocab_copy):
    bpe = vocab_copy / "vocab.bpe"
    bpe.write_bytes(bpe.read_bytes()[:200_000])
    with pytest.raises(GptlabError, match="vocab.bpe"):
        BPETokenizer.from_gpt2(vocab_copy)


def test_missing_vocab_file(vocab_copy):
    (vocab_copy / "vocab.bpe").unlink()
    with pytest.raises(GptlabError, match="vocab.bpe"):
        BPETokenizer.from_gpt2(vocab_copy)


def test_corrupt_saved_tokenizer(tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text('{"format": "gptlab-tokenizer", "type": "bpe", "mergeable_ranks": [["!!notb64", 0]]}')
    with pytest.raises(GptlabError, match="tok.json"):
        load_tokenizer(bad)
    bad.write_text("{not json")
    with pytest.raises(GptlabError, match="not valid JSON"):
        load_tokenizer(bad)


def test_bpe_load_reads_only_bpe_files(tmp_path):
    # BPETokenizer.load reads files itself (gptlab.tokenizer.files), without the registry's dispatch.
    CharTokenizer.from_text("abc").save(tmp_path / "c.json")
    with pytest.raises(GptlabError, match=r"c.json: holds a char tokenizer, not a BPE tokenizer"):
        BPETokenizer.load(tmp_path / "c.json")
    (tmp_path / "empty.tiktoken").write_bytes(b"")  # no ranks at all: an error, not a traceback
    with pytest.raises(GptlabError, match="empty.tiktoken: not a gptlab tokenizer .* or tiktoken ranks file"):
        BPETokenizer.load(tmp_path / "empty.tiktoken")
    with pytest.raises(GptlabError, match="cannot read tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")


def test_vocabulary_missing_single_bytes_is_rejected():
    ranks = {bytes([b]): b for b in range(255)}
    with pytest.raises(GptlabError, match="single-byte"):
        BPETokenizer(ranks)


def test_tiktoken_ranks_file_with_garbage(tmp_path):
    bad = tmp_path / "x.tiktoken"
    bad.write_text(base64.b64encode(b"a").decode() + " notanumber\n")
    with pytest.raises(GptlabError, match="x.tiktoken"):
        load_tokenizer(bad)
