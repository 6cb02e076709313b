"""Stage 1: tokenizers. Byte-level BPE (GPT-2's, or trained here), character level, the book's word tokenizer."""

from gptlab.tokenizer.base import ENDOFTEXT, Tokenizer
from gptlab.tokenizer.bpe import GPT2_PATTERN, BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.registry import get_tokenizer, gpt2_tokenizer, load_tokenizer, save_tokenizer
from gptlab.tokenizer.simple import SimpleTokenizer

__all__ = [
    "ENDOFTEXT",
    "GPT2_PATTERN",
    "BPETokenizer",
    "CharTokenizer",
    "SimpleTokenizer",
    "Tokenizer",
    "get_tokenizer",
    "gpt2_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
]
