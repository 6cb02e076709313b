"""Character-level tokenizer: one id per character of a fixed alphabet (nanoGPT's shakespeare_char)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text
from gptlab.tokenizer.base import ENDOFTEXT, Tokenizer


class CharTokenizer(Tokenizer):
    """Maps each character of ``chars`` to its index; special tokens follow the alphabet.

    Build one from a corpus with :meth:`from_text`. Characters outside the alphabet raise an error,
    unless ``unk`` names a special token to map them to.
    """

    def __init__(self, chars: str, special_tokens: Iterable[str] = (ENDOFTEXT,), unk: str | None = None):
        if len(set(chars)) != len(chars):
            raise GptlabError("character alphabet has repeated characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.special_tokens = {tok: len(chars) + i for i, tok in enumerate(special_tokens)}
        if unk is not None and unk not in self.special_tokens:
            raise GptlabError(f"unk token {unk!r} must be one of the special tokens {list(self.special_tokens)}")
        self.unk = unk
        self._itos = list(chars) + list(self.special_tokens)
        self.name = "char"

    @classmethod
    def from_text(cls, text: str | Iterable[str], special_tokens: Iterable[str] = (ENDOFTEXT,)) -> CharTokenizer:
        """An alphabet of every distinct character in ``text`` (a string or an iterable of strings), sorted."""
        if isinstance(text, str):
            text = [text]
        seen: set[str] = set()
        for chunk in text:
            seen.update(chunk)
        special_tokens = tuple(special_tokens)
        if not seen:
            raise GptlabError("cannot build a character vocabulary from empty text")
        return cls("".join(sorted(seen)), special_tokens)

    @property
    def n_vocab(self) -> int:
        return len(self._itos)

    def encode_ordinary(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError as exc:
            if self.unk is None:
                raise GptlabError(
                    f"character {exc.args[0]!r} is not in this character vocabulary of {len(self.chars)} characters"
                ) from None
        unk = self.special_tokens[self.unk]
        return [stoi.get(c, unk) for c in text]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join([self._itos[i] for i in ids])
        except (IndexError, TypeError):
            raise GptlabError(f"token ids must be integers in 0..{self.n_vocab - 1}") from None

    def save(self, path: str | os.PathLike) -> None:
        payload = {
            "format": "gptlab-tokenizer",
            "version": 1,
            "type": "char",
            "chars": self.chars,
            "special_tokens": list(self.special_tokens),
            "unk": self.unk,
        }
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False))

    def __repr__(self) -> str:
        return f"CharTokenizer(n_vocab={self.n_vocab})"
