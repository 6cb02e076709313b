"""Find a tokenizer by name or file: ``get_tokenizer("gpt2" | "char" | "simple" | PATH)``.

GPT-2's vocabulary files (:data:`GPT2_FILES`) are listed here, with their addresses and checksums:
the tokenizer layer owns them, :mod:`gptlab.downloads` fetches them into the cache, and
:mod:`gptlab.data.registry` lists them among the named data sets (``gptlab data list|fetch``).
"""

from __future__ import annotations

import os
from pathlib import Path

from gptlab.downloads import CachedFile, cached_file
from gptlab.errors import GptlabError
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.files import read_tokenizer_file
from gptlab.tokenizer.gguf_vocab import read_gguf_vocab
from gptlab.tokenizer.hf_json import from_tokenizer_json, is_tokenizer_json, read_tokenizer_config
from gptlab.tokenizer.hf_writer import save_pretrained_tokenizer
from gptlab.tokenizer.simple import SimpleTokenizer

_GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models/124M"

# OpenAI's files for GPT-2's BPE, as BPETokenizer.from_gpt2 reads them (one folder, these names).
GPT2_FILES: tuple[CachedFile, ...] = (
    CachedFile(
        "gpt2-encoder",
        "gpt2/encoder.json",
        f"{_GPT2_URL}/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "GPT-2 BPE vocabulary (token -> id)",
    ),
    CachedFile(
        "gpt2-vocab",
        "gpt2/vocab.bpe",
        f"{_GPT2_URL}/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        "GPT-2 BPE merges",
    ),
)

_GPT2: BPETokenizer | None = None


def gpt2_tokenizer() -> BPETokenizer:
    """GPT-2's tokenizer, its vocabulary files taken from (or downloaded into) the cache."""
    global _GPT2
    if _GPT2 is None:
        paths = [cached_file(f) for f in GPT2_FILES]  # fetched and checked; both in the cache's gpt2/
        _GPT2 = BPETokenizer.from_gpt2(paths[0].parent)
    return _GPT2


def get_tokenizer(name_or_path: str | os.PathLike, corpus: str | None = None) -> Tokenizer:
    """A tokenizer by name or saved file.

    * ``"gpt2"``: GPT-2's BPE (50,257 ids).
    * ``"char"``: character level; needs ``corpus`` (its alphabet is the corpus's characters).
    * ``"simple"``: the book's word tokenizer; needs ``corpus``.
    * a path: a file written by a tokenizer's ``save`` (or a tiktoken ``.tiktoken`` ranks file).
    """
    name = str(name_or_path)
    if name == "gpt2":
        return gpt2_tokenizer()
    if name in ("char", "simple"):
        if corpus is None:
            raise GptlabError(f"the {name!r} tokenizer builds its vocabulary from a corpus; none was given")
        return CharTokenizer.from_text(corpus) if name == "char" else SimpleTokenizer.from_text(corpus)
    path = Path(name)
    if not path.exists():
        raise GptlabError(f"unknown tokenizer {name!r}: expected 'gpt2', 'char', 'simple' or a tokenizer file")
    return load_tokenizer(path)


def save_tokenizer(tok: Tokenizer, directory: str | os.PathLike) -> None:
    """Write ``tok`` into a model, run or data folder as ``tokenizer.json``.

    A BPE tokenizer is written in Hugging Face's format, with a ``tokenizer_config.json`` beside it
    when it has a chat template or BOS/EOS/PAD names (what a model's own tokenizer brings), so that
    :func:`load_tokenizer` on the folder gives it back whole. Other kinds use gptlab's format.
    """
    directory = Path(directory)
    if isinstance(tok, BPETokenizer) and (tok.chat_template or tok.bos_token or tok.eos_token or tok.pad_token):
        save_pretrained_tokenizer(tok, directory)
    else:
        tok.save(directory / "tokenizer.json")
        (directory / "tokenizer_config.json").unlink(missing_ok=True)  # a stale one would describe another


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a file or folder.

    Reads a Hugging Face ``tokenizer.json`` (with the ``tokenizer_config.json`` beside it: chat
    template, BOS/EOS/PAD), a GGUF file's vocabulary, any file gptlab's ``save`` writes, or a tiktoken
    ranks file (GPT-2's pattern). A folder stands for its ``tokenizer.json``.
    """
    if Path(path).suffix.lower() == ".gguf" and Path(path).is_file():
        payload, config = read_gguf_vocab(path)
        return from_tokenizer_json(payload, str(path), config, name=Path(path).stem)
    path, payload = read_tokenizer_file(path)
    if isinstance(payload, bytes):
        return BPETokenizer._from_tiktoken_ranks(payload, path)
    if is_tokenizer_json(payload):
        return from_tokenizer_json(payload, str(path), read_tokenizer_config(path.parent), name=path.parent.name or "hf")
    kind = payload.get("type")
    try:
        if kind == "bpe":
            return BPETokenizer._from_payload(payload, str(path))
        if kind == "char":
            return CharTokenizer(payload["chars"], payload.get("special_tokens", ()), payload.get("unk"))
        if kind == "simple":
            return SimpleTokenizer(payload["words"])
    except (KeyError, TypeError) as exc:
        raise GptlabError(f"{path}: corrupt {kind} tokenizer file (missing or bad field {exc})") from None
    raise GptlabError(f"{path}: unknown tokenizer type {kind!r} (expected bpe, char or simple)")
