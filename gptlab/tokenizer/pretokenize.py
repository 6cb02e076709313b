"""Pre-tokenization: splitting text into the pieces BPE merges within.

GPT-2's pattern needs Unicode classes (``\\p{L}``, ``\\p{N}``), so it runs on the third-party ``regex``
engine. Most real text is ASCII, where those classes are just ``[A-Za-z]`` and ``[0-9]``, and the
standard library's ``re`` runs the equivalent pattern about twice as fast. :class:`Pretokenizer`
uses ``re`` on ASCII stretches and ``regex`` around every non-ASCII character.

Why cutting the text is safe: no piece of GPT-2's pattern contains a non-space character followed by
a whitespace character (pieces are either whitespace runs or start with at most one space), so at
every position ``i`` where ``text[i-1]`` is not whitespace and ``text[i]`` is, a piece ends; and the
pattern has no look-behind, so the split of ``text[i:]`` does not depend on what came before. Both
engines are therefore run on segments that start and end at such positions.
"""

from __future__ import annotations

import re

import regex

from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN, tiktoken_compatible

# Unicode White_Space in the ASCII range (what both ``regex`` and tiktoken's Rust engine call \s;
# note Python's own str.isspace also counts \x1c-\x1f, which White_Space does not).
_ASCII_WS = "\t\n\x0b\x0c\r "
# GPT-2's pattern restricted to ASCII text: \p{L} -> [A-Za-z], \p{N} -> [0-9], \s -> _ASCII_WS.
# Written in the original (non-possessive) GPT-2 form, which splits identically.
_GPT2_ASCII = re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_ASCII_WS}A-Za-z0-9]+|[{_ASCII_WS}]+(?![^{_ASCII_WS}])|[{_ASCII_WS}]+"""
)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# A safe cut point is the position right after a non-space that is followed by a space.
_SAFE_CUT = regex.compile(r"\S(?=\s)")
# One findall over all the characters rather than a match per character: ~50x faster, and this runs
# on every `gptlab` start-up (the CLI imports the tokenizers).
_WHITESPACE = frozenset(regex.findall(r"\s", "".join(map(chr, range(0x3001))))) | {"\u3000"}


class Pretokenizer:
    """Splits text with ``pattern``; GPT-2's pattern gets the exact ASCII fast path described above."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._pat = regex.compile(tiktoken_compatible(pattern))
        self._ascii = _GPT2_ASCII if pattern == GPT2_PATTERN else None

    def split(self, text: str) -> list[str]:
        """The pre-tokens of ``text``, in order; their concatenation is ``text``."""
        if self._ascii is None or len(text) < 64:
            return self._pat.findall(text)
        if text.isascii():
            return self._ascii.findall(text)
        return self._split_mixed(text)

    def _split_mixed(self, text: str) -> list[str]:
        out: list[str] = []
        fast, slow = self._ascii.findall, self._pat.findall
        n = len(text)
        start = 0
        while start < n:
            m = _NON_ASCII.search(text, start)
            if m is None:
                out += fast(text, start, n)
                break
            # Back up from the non-ASCII character to the last safe cut in [start, m.start()].
            cut = m.start()
            while cut > start and not (text[cut] in _WHITESPACE and text[cut - 1] not in _WHITESPACE):
                cut -= 1
            if cut > start:
                out += fast(text, start, cut)
            # The Unicode segment runs to the first safe cut after the character.
            nxt = _SAFE_CUT.search(text, m.end())
            stop = nxt.end() if nxt else n
            out += slow(text, cut, stop)
            start = stop
        return out
