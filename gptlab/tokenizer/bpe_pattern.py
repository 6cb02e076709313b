"""Pre-tokenization patterns, and the Unicode-version fix that keeps them identical to tiktoken's.

Kept apart so every tokenizer module can import them without cycles.
"""

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols (each optionally led by one
# space), and whitespace runs that leave the last space to the next word. Written with possessive
# quantifiers as tiktoken does; it splits text exactly as GPT-2's original
# r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+" and is ~2x faster.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# Code points that the `regex` module (Unicode 17 tables) calls letters or numbers but tiktoken's
# Rust regex engine (Unicode 16 tables) does not know, so tiktoken treats them as "other" symbols:
# CJK Extension J, the new Tangut and Sidetic blocks, Latin additions, and so on. Found by encoding
# every code point in letter/number/symbol contexts with both (tests/tokenizer keeps that sweep), so
# if either library moves to other Unicode tables the test says so.
_NEWER_LETTERS = (
    r"\U00000558\U0000058b-\U0000058c\U0000088f\U00000c5c\U00000cdc\U0000208f"
    r"\U0000209d-\U0000209f\U0000a7ce-\U0000a7cf\U0000a7d2\U0000a7d4\U0000a7dd\U0000a7e2"
    r"\U0000a7f1\U0000ab6c-\U0000ab6d\U000107bb-\U000107bf\U00010940-\U00010959"
    r"\U00010ec5-\U00010ec7\U00010ed9-\U00010eee\U00011b0a\U00011db0-\U00011ddb\U00011df1"
    r"\U00016ea0-\U00016eb8\U00016ebb-\U00016ed3\U00016ff2-\U00016ff3\U000187f8-\U000187ff"
    r"\U00018cd6-\U00018cda\U00018d09-\U00018d20\U00018d80-\U00018df2\U00018e00-\U00019191"
    r"\U000191a0-\U000191d2\U0001b123-\U0001b128\U0001b168\U0001d6a6\U0001df1f-\U0001df24"
    r"\U0001df2b-\U0001df81\U0001df90-\U0001df96\U0001dfcd-\U0001dfff\U0001e6c0-\U0001e6de"
    r"\U0001e6e0-\U0001e6e2\U0001e6e4-\U0001e6e5\U0001e6e7-\U0001e6ed\U0001e6f0-\U0001e6f4"
    r"\U0001e6fe-\U0001e6ff\U0002b73a-\U0002b73f\U0002b81e\U0002cea2-\U0002cead"
    r"\U000323b0-\U00033479\U0003d000-\U0003fc3f"
)
_NEWER_NUMBERS = r"\U00011de0-\U00011de9\U0001246f\U00012475-\U0001247f\U00012550-\U00012686\U00016ff4-\U00016ff6"


def tiktoken_compatible(pattern: str) -> str:
    r"""``pattern`` rewritten for the ``regex`` module so ``\p{L}``/``\p{N}`` mean what tiktoken's do.

    Each ``\p{L}`` becomes ``[\p{L}--[newer letters]]`` (likewise ``\p{N}``), with the V1 flag that
    enables set difference. The rewrite is exact inside character classes too: ``[^\s\p{L}\p{N}]``
    becomes "not space, not (older) letter, not (older) number", so the newer code points fall into
    the "other symbols" piece exactly as in tiktoken. Saved and exported tokenizers keep the
    original pattern string; this form is only what gptlab compiles.
    """
    if r"\p{L}" not in pattern and r"\p{N}" not in pattern:
        return pattern
    out = pattern.replace(r"\p{L}", rf"[\p{{L}}--[{_NEWER_LETTERS}]]")
    out = out.replace(r"\p{N}", rf"[\p{{N}}--[{_NEWER_NUMBERS}]]")
    return "(?V1)" + out
