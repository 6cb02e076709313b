"""Pre-tokenization patterns (kept apart so every tokenizer module can import them without cycles)."""

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols (each optionally led by one
# space), and whitespace runs that leave the last space to the next word. Written with possessive
# quantifiers as tiktoken does; it splits text exactly as GPT-2's original
# r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+" and is ~2x faster.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
