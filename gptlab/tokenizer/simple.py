"""The book's simple word tokenizer (chapter 2): split on punctuation and spaces, look words up.

It exists to teach why BPE is needed: any word not seen when the vocabulary was built becomes
``<|unk|>``, and decoding cannot restore the original spacing exactly.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text
from gptlab.tokenizer.base import ENDOFTEXT, Tokenizer

UNK = "<|unk|>"
# The book's split: punctuation marks, double dashes and whitespace are separators; kept ones are tokens.
_SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
# On decode, remove the space the join put before punctuation.
_SPACE_BEFORE_PUNCT = re.compile(r'\s+([,.:;?!"()\'])')


def split_words(text: str) -> list[str]:
    """The book's pre-tokenization: words and punctuation, whitespace dropped."""
    return [item.strip() for item in _SPLIT.split(text) if item.strip()]


class SimpleTokenizer(Tokenizer):
    """Word-level tokenizer with ``<|unk|>`` and ``<|endoftext|>`` (the book's SimpleTokenizerV2)."""

    def __init__(self, words: Iterable[str]):
        words = [w for w in dict.fromkeys(words) if w not in (ENDOFTEXT, UNK)]
        self.words = words
        self.str_to_int = {w: i for i, w in enumerate(words)}
        self.special_tokens = {ENDOFTEXT: len(words), UNK: len(words) + 1}
        self.int_to_str = dict(enumerate(words)) | {v: k for k, v in self.special_tokens.items()}
        self.name = "simple"

    @classmethod
    def from_text(cls, text: str) -> SimpleTokenizer:
        """Vocabulary of the sorted distinct words of ``text``, as the book builds it."""
        words = sorted(set(split_words(text)))
        if not words:
            raise GptlabError("cannot build a word vocabulary from empty text")
        return cls(words)

    @property
    def n_vocab(self) -> int:
        return len(self.int_to_str)

    def encode_ordinary(self, text: str) -> list[int]:
        unk = self.special_tokens[UNK]
        return [self.str_to_int.get(w, unk) for w in split_words(text)]

    def encode(self, text: str, **kwargs) -> list[int]:
        """Encode ``text``; ``<|endoftext|>`` in the text is always the special id (the book's behaviour)."""
        ids: list[int] = []
        for i, part in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.special_tokens[ENDOFTEXT])
            ids.extend(self.encode_ordinary(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        try:
            text = " ".join(self.int_to_str[i] for i in ids)
        except KeyError as exc:
            raise GptlabError(f"token id {exc.args[0]} is not in the vocabulary (0..{self.n_vocab - 1})") from None
        return _SPACE_BEFORE_PUNCT.sub(r"\1", text)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def save(self, path: str | os.PathLike) -> None:
        payload = {"format": "gptlab-tokenizer", "version": 1, "type": "simple", "words": self.words}
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False))

    def __repr__(self) -> str:
        return f"SimpleTokenizer(n_vocab={self.n_vocab})"
