"""Pre-tokenization: splitting text into the pieces BPE merges within.

The models' patterns need Unicode classes (``\\p{L}``, ``\\p{N}``), so they run on the third-party
``regex`` engine. Most real text is ASCII, where those classes are just ``[A-Za-z]`` and ``[0-9]``, and
the standard library's ``re`` runs an equivalent pattern about twice as fast. For the patterns listed in
:data:`ASCII_FORMS` (GPT-2's, Llama 3's, Qwen2's, Qwen3.5's), :class:`Pretokenizer` uses ``re`` on
ASCII stretches and ``regex`` around every non-ASCII character.

Why cutting the text is safe: each listed pattern has a set of *cut characters* such that at every
position ``i`` where ``text[i-1]`` is not whitespace and ``text[i]`` is a cut character, a piece ends;
and no pattern has a look-behind or ``$`` that could see across ``i``, so the split of ``text[i:]``
does not depend on what came before. Both engines are therefore run on segments that start and end at
such positions. For GPT-2 every whitespace character is a cut character (no piece holds a non-space
followed by a space). Llama 3 and Qwen let punctuation take the line breaks after it (``"!\\n"`` is one
piece), so only a plain space is: no piece of theirs holds a non-space followed by a space.
"""

from __future__ import annotations

import re

import regex

from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, QWEN35_PATTERN, tiktoken_compatible

# Unicode White_Space in the ASCII range (what both ``regex`` and tiktoken's Rust engine call \s;
# note Python's own str.isspace also counts \x1c-\x1f, which White_Space does not).
_ASCII_WS = "\t\n\x0b\x0c\r "
# GPT-2's pattern restricted to ASCII text: \p{L} -> [A-Za-z], \p{N} -> [0-9], \s -> _ASCII_WS.
# Written in the original (non-possessive) GPT-2 form, which splits identically.
_GPT2_ASCII = re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_ASCII_WS}A-Za-z0-9]+|[{_ASCII_WS}]+(?![^{_ASCII_WS}])|[{_ASCII_WS}]+"""
)
# Llama 3's pattern restricted to ASCII text (\s -> _ASCII_WS). Its case-insensitive contractions
# "(?i:'s|'t|'re|'ve|'m|'ll|'d)" are spelled out with explicit classes (the same on ASCII text, and
# faster: they are tried at every position); no two of them can match at one place, so order is free.
_LLAMA_ASCII = (rf"""'(?:[sdmtSDMT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{{DIGITS}}| ?[^{_ASCII_WS}A-Za-z0-9]+[\r\n]*"""
                rf"""|[{_ASCII_WS}]*[\r\n]+|[{_ASCII_WS}]+(?![^{_ASCII_WS}])|[{_ASCII_WS}]+""")
# pattern -> (the same pattern for ASCII text, in `re` syntax; the characters a piece may be cut before)
ASCII_FORMS: dict[str, tuple[re.Pattern, str]] = {
    GPT2_PATTERN: (_GPT2_ASCII, _ASCII_WS),
    LLAMA3_PATTERN: (re.compile(_LLAMA_ASCII.replace("{DIGITS}", "{1,3}")), " "),
    QWEN2_PATTERN: (re.compile(_LLAMA_ASCII.replace("{DIGITS}", "")), " "),
    QWEN35_PATTERN: (re.compile(_LLAMA_ASCII.replace("{DIGITS}", "")), " "),  # ASCII has no marks (\p{M})
}
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# One findall over all the characters rather than a match per character: ~50x faster, and this runs
# on every `gptlab` start-up (the CLI imports the tokenizers).
_WHITESPACE = frozenset(regex.findall(r"\s", "".join(map(chr, range(0x3001))))) | {"\u3000"}


class Pretokenizer:
    """Splits text with ``pattern``; the patterns of :data:`ASCII_FORMS` get the exact ASCII fast path."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._pat = regex.compile(tiktoken_compatible(pattern))
        fast = ASCII_FORMS.get(pattern)
        self._ascii, cut_chars = fast if fast else (None, "")
        self._cut_chars = frozenset(cut_chars)
        # A safe cut is the position right after a non-space that is followed by a cut character.
        self._safe_cut = regex.compile(rf"\S(?=[{regex.escape(cut_chars)}])") if fast else None

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
        cuts, safe_cut = self._cut_chars, self._safe_cut
        n = len(text)
        start = 0
        while start < n:
            m = _NON_ASCII.search(text, start)
            if m is None:
                out += fast(text, start, n)
                break
            # Back up from the non-ASCII character to the last safe cut in [start, m.start()].
            cut = m.start()
            while cut > start and not (text[cut] in cuts and text[cut - 1] not in _WHITESPACE):
                cut -= 1
            if cut > start:
                out += fast(text, start, cut)
            # The Unicode segment runs to the first safe cut after the character.
            nxt = safe_cut.search(text, m.end())
            stop = nxt.end() if nxt else n
            out += slow(text, cut, stop)
            start = stop
        return out
