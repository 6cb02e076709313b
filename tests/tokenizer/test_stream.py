"""Streamed decoding: a character split over several tokens comes out whole, once, when complete."""

from __future__ import annotations

from collections.abc import Iterable

from gptlab.tokenizer import get_tokenizer
from gptlab.tokenizer.stream import StreamDecoder


class _ByteTokens:
    """A stand-in tokenizer whose token ``i`` is the single byte ``i``: every split is under the test's control."""

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return bytes(ids)


def test_a_character_split_over_tokens_waits_until_complete():
    decoder = StreamDecoder(_ByteTokens())
    euro = "€".encode()  # 3 bytes
    assert [decoder.feed(b) for b in euro] == ["", "", "€"]
    assert decoder.feed(list("a👋".encode())) == "a👋"  # several tokens at once
    assert decoder.finish() == ""


def test_an_incomplete_character_at_the_end_is_one_replacement_character():
    decoder = StreamDecoder(_ByteTokens())
    assert decoder.feed(list("x€".encode()[:-1])) == "x"
    assert decoder.finish() == "\ufffd"
    assert decoder.feed(ord("y")) == "y"  # finish() leaves the decoder ready for a new stream
    assert decoder.feed(0xFF) == "\ufffd"  # never valid UTF-8: replaced at once, as decode() does


def test_streamed_gpt2_tokens_equal_decoding_them_all():
    tok = get_tokenizer("gpt2")
    text = "Grüße 👋🏽 from 東京: naïve café ✓"
    ids = tok.encode(text)
    # The test is only meaningful if some token really ends inside a character.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    decoder = StreamDecoder(tok)
    pieces = [decoder.feed(i) for i in ids] + [decoder.finish()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == text == tok.decode(ids)
