"""Added tokens: whole strings a model's tokenizer matches before any BPE (Hugging Face's rules).

A ``tokenizer.json`` lists ``added_tokens``: the special tokens (``<|begin_of_text|>``,
``<|im_start|>``) and, in some models, ordinary strings that should always be one token (DeepSeek's
single characters, Qwen2.5's ``<tool_call>``). Each has flags: ``special`` (gptlab's
``allowed_special`` rules apply to it; the others always match), ``lstrip``/``rstrip`` (the token
swallows the whitespace on that side), ``single_word`` (only between non-word characters) and
``normalized`` (matched in normalized text rather than raw text).

Matching follows ``tokenizers``: find the leftmost match, the longest one at that position (the
regex alternation lists longer tokens first), then apply the flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import regex


@dataclass(frozen=True)
class AddedToken:
    """One entry of ``tokenizer.json``'s ``added_tokens`` (same field names)."""

    id: int
    content: str
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AddedToken:
        """From a ``tokenizer.json`` ``added_tokens`` entry."""
        return cls(int(obj["id"]), str(obj["content"]), bool(obj.get("special", False)),
                   bool(obj.get("lstrip", False)), bool(obj.get("rstrip", False)),
                   bool(obj.get("single_word", False)), bool(obj.get("normalized", False)))

    def to_json(self) -> dict[str, Any]:
        """The ``tokenizer.json`` entry, in the field order ``tokenizers`` writes."""
        d = asdict(self)
        return {k: d[k] for k in ("id", "content", "single_word", "lstrip", "rstrip", "normalized", "special")}


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


# Unicode White_Space, as Rust's char::is_whitespace (Python's str.isspace also counts \x1c-\x1f).
_is_space = regex.compile(r"\s").fullmatch


class AddedVocabulary:
    """Splits text into (segment, id or None) around the added tokens that may match."""

    def __init__(self, tokens: list[AddedToken]):
        self.tokens = {t.content: t for t in tokens}
        self._regexes: dict[tuple[bool, frozenset[str]], regex.Pattern | None] = {}

    def _regex(self, normalized: bool, allowed: frozenset[str]) -> regex.Pattern | None:
        key = (normalized, allowed)
        if key not in self._regexes:
            names = [t.content for t in self.tokens.values()
                     if t.normalized == normalized and (not t.special or t.content in allowed)]
            names.sort(key=len, reverse=True)
            self._regexes[key] = regex.compile("|".join(map(regex.escape, names))) if names else None
        return self._regexes[key]

    def split(self, text: str, allowed: frozenset[str], normalized: bool) -> list[tuple[str, int | None]]:
        """``text`` cut at the matching added tokens of one kind (raw or ``normalized``).

        ``allowed`` is the set of special tokens that may match (non-special ones always may).
        Segments with an id are tokens (including any whitespace they strip); the others are text.
        """
        pat = self._regex(normalized, allowed)
        if pat is None:
            return [(text, None)] if text else []
        out: list[tuple[str, int | None]] = []
        start_offset = 0
        n = len(text)
        for m in pat.finditer(text):
            tok = self.tokens[m.group()]
            start, stop = m.span()
            if tok.single_word and ((start > 0 and _is_word_char(text[start - 1]))
                                    or (stop < n and _is_word_char(text[stop]))):
                continue
            if tok.lstrip:
                while start > start_offset and _is_space(text[start - 1]):
                    start -= 1
            if tok.rstrip:
                while stop < n and _is_space(text[stop]):
                    stop += 1
            if start > start_offset:
                out.append((text[start_offset:start], None))
            out.append((text[start:stop], tok.id))
            start_offset = stop
        if start_offset < n:
            out.append((text[start_offset:], None))
        return out
