"""Real model vocabularies survive GGUF -> gptlab tokenizer -> GGUF metadata unchanged.

The files are the vocabulary-only GGUF files llama.cpp ships for its tokenizer tests (shared/data/llama-vocab):
the recipe name (``tokenizer.ggml.pre``) must be found again from the tokenizer's own pre-tokenizer, and the
tokens, types and merges must be the file's. (The tiny trained tokenizers are covered by
tests/model/test_gguf_export.py, and llama.cpp itself by tests/model/test_gguf_llama_cpp.py.)
"""

from __future__ import annotations

import pytest

from gptlab.tokenizer import load_tokenizer
from gptlab.tokenizer.gguf_tokens import gguf_vocab_fields
from gptlab.tokenizer.gguf_vocab import UNUSED, read_gguf_metadata


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "starcoder"])
def test_model_vocabularies_round_trip(shared_data, name):
    path = shared_data / "llama-vocab" / f"ggml-vocab-{name}.gguf"
    meta = read_gguf_metadata(path)
    fields = gguf_vocab_fields(load_tokenizer(path), len(meta["tokenizer.ggml.tokens"]))
    assert fields["tokenizer.ggml.pre"] == name
    assert fields["tokenizer.ggml.tokens"] == meta["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.merges"] == meta["tokenizer.ggml.merges"]
    # Older converters typed the "[PAD<id>]" fillers user-defined; they are written as unused now.
    tokens = meta["tokenizer.ggml.tokens"]
    expected = [UNUSED if tokens[i] == f"[PAD{i}]" else kind for i, kind in enumerate(meta["tokenizer.ggml.token_type"])]
    assert fields["tokenizer.ggml.token_type"] == expected
    for key in ("bos_token_id", "eos_token_id"):
        assert fields.get(f"tokenizer.ggml.{key}") == meta.get(f"tokenizer.ggml.{key}")
    # llama.cpp's default for the recipe when the file does not say (Llama 3 adds its BOS), written out.
    assert fields["tokenizer.ggml.add_bos_token"] == meta.get("tokenizer.ggml.add_bos_token", name == "llama-bpe")
