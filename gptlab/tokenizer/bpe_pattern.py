"""Pre-tokenization patterns, and the Unicode-version fix that keeps them identical to tiktoken's.

Kept apart so every tokenizer module can import them without cycles.
"""

import regex

from gptlab.tokenizer.unicode16 import DIFFERENCES

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols (each optionally led by one
# space), and whitespace runs that leave the last space to the next word. Written with possessive
# quantifiers as tiktoken does; it splits text exactly as GPT-2's original
# r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+" and is ~2x faster.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


# The original tokenizer.json regexes. llama.cpp rewrites "(?i:'s|...)" as explicit classes because its
# own engine lacks inline flags; Hugging Face's (Oniguruma) has them, so the originals stay.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's differs from Llama 3's only in taking numbers one digit at a time (\p{N}, not \p{N}{1,3}).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5 keeps combining marks (\p{M}) inside words instead of splitting them off as punctuation.
QWEN35_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                  r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def tiktoken_compatible(pattern: str) -> str:
    r"""``pattern`` rewritten for the ``regex`` module so Unicode properties mean what tiktoken's mean.

    The ``regex`` module ships Unicode 17 tables; tiktoken's Rust engine and Hugging Face
    ``tokenizers``' Oniguruma both use Unicode 16, so code points new in 17 (CJK Extension J, new
    Latin letters, symbols, ...) are "other" to them. Each ``\p{X}`` whose tables differ becomes
    ``[\p{X}--[newer]]`` (plus the few code points whose category moved), with the V1 flag that
    enables set operations; ``\P{X}`` and ``\d`` likewise. The rewrite is exact inside character
    classes too: ``[^\s\p{L}\p{N}]`` becomes "not space, not (Unicode 16) letter or number". The
    tables come from scripts/unicode16_tables.py, and tests sweep every code point against both
    libraries. Saved and exported tokenizers keep the original pattern string; this form is only
    what gptlab compiles.
    """
    if "\\p{" not in pattern and "\\P{" not in pattern and "\\d" not in pattern:
        return pattern
    out = _PROPERTY.sub(_rewrite_property, pattern)
    return out if out == pattern else "(?V1)" + out


# A property escape not itself escaped: an even run of backslashes, then \p{X}, \P{X} or \d.
_PROPERTY = regex.compile(r"(?<!\\)((?:\\\\)*)\\(?:([pP])\{(\w+)\}|(d))")


def _rewrite_property(m: regex.Match) -> str:
    lead, kind, name = m.group(1), m.group(2) or "p", m.group(3) or "Nd"
    diff = DIFFERENCES.get(name)
    if diff is None or (not diff[0] and not diff[1]):
        return m.group(0)
    remove, add = diff
    body = rf"\p{{{name}}}--[{remove}]" if remove else rf"\p{{{name}}}"
    cls = rf"[[{body}][{add}]]" if add else rf"[{body}]"
    return lead + (cls if kind == "p" else f"[^{cls}]")
