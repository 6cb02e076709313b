"""Writing any gptlab BPE tokenizer as a Hugging Face ``tokenizer.json`` and ``tokenizer_config.json``.

The result loads in ``tokenizers`` and transformers' ``PreTrainedTokenizerFast`` with identical ids. A
tokenizer trained here gets its merge list recovered from its ranks (each token's two parts are what
BPE with the lower ranks makes of it), GPT-2's pre-tokenizer spelled as ``ByteLevel``, any other pattern
as a ``Split``; a model's own tokenizer writes back the pipeline objects it was read with. Kept below
:mod:`gptlab.tokenizer.bpe` (it only reads a tokenizer's attributes) so that ``BPETokenizer.save`` can
use it; reading is :mod:`gptlab.tokenizer.hf_json`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text
from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN
from gptlab.tokenizer.byte_alphabet import bytes_to_unicode
from gptlab.tokenizer.merge import _NOT_A_TOKEN

CONFIG_NAME = "tokenizer_config.json"
BYTE_LEVEL_POST = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list of a rank-ordered vocabulary: for each token, in rank order, the two tokens BPE
    with only lower ranks makes of its bytes. Raises if a token is not reachable that way (then the
    ranks are not a BPE training record and no single merge list reproduces them)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, at = _NOT_A_TOKEN, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1], _NOT_A_TOKEN)
                if r < best and r < rank:
                    best, at = r, i
            if at < 0:
                break
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise GptlabError(f"token {token!r} (id {rank}) is not made by merging two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _pre_tokenizer_json(tok: Any) -> dict[str, Any]:
    if tok.pipeline is not None and "pre_tokenizer" in tok.pipeline:
        return tok.pipeline["pre_tokenizer"]
    if tok.pattern == GPT2_PATTERN:
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}


def to_tokenizer_json(tok: Any) -> dict[str, Any]:
    """``tok`` (a :class:`~gptlab.tokenizer.bpe.BPETokenizer`) as a ``tokenizer.json`` object (see the module docstring)."""
    alphabet = bytes_to_unicode()
    spell = lambda b: "".join(alphabet[x] for x in b)  # noqa: E731 - a one-line helper
    merges = tok.merges if tok.merges is not None else recover_merges(tok.mergeable_ranks)
    pipeline = tok.pipeline or {}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [t.to_json() for t in tok.added_tokens],
        "normalizer": pipeline.get("normalizer"),
        "pre_tokenizer": _pre_tokenizer_json(tok),
        "post_processor": pipeline.get("post_processor", BYTE_LEVEL_POST),
        "decoder": pipeline.get("decoder") or BYTE_LEVEL_DECODER,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tok.ignore_merges,
            "vocab": {spell(t): i for t, i in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])},
            "merges": [[spell(a), spell(b)] for a, b in merges],
        },
    }


def tokenizer_config(tok: Any, model_max_length: int | None = None) -> dict[str, Any]:
    """The ``tokenizer_config.json`` transformers reads beside our ``tokenizer.json``."""
    eos = tok.eos_token or (tok.eot_id is not None and "<|endoftext|>") or None
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "bos_token": tok.bos_token,
        "eos_token": eos,
        "pad_token": tok.pad_token,
        "added_tokens_decoder": {str(t.id): {k: v for k, v in t.to_json().items() if k != "id"} for t in tok.added_tokens},
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    return config


def save_pretrained_tokenizer(tok: Any, directory: str | os.PathLike, model_max_length: int | None = None) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (atomically each)."""
    directory = Path(directory)
    atomic_write_text(directory / "tokenizer.json", json.dumps(to_tokenizer_json(tok), ensure_ascii=False))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(tokenizer_config(tok, model_max_length), ensure_ascii=False, indent=2))
