"""Find a tokenizer by name or file: ``get_tokenizer("gpt2" | "char" | "simple" | PATH)``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.simple import SimpleTokenizer

_GPT2: BPETokenizer | None = None


def gpt2_tokenizer() -> BPETokenizer:
    """GPT-2's tokenizer, its vocabulary files taken from (or downloaded into) the data cache."""
    global _GPT2
    if _GPT2 is None:
        from gptlab.data.registry import dataset_path

        dataset_path("gpt2-vocab")
        _GPT2 = BPETokenizer.from_gpt2(dataset_path("gpt2-encoder").parent)
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


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load any tokenizer file written by gptlab's ``save`` (or a tiktoken ranks file, GPT-2 pattern)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GptlabError(f"{path}: cannot read tokenizer file ({exc.strerror})") from None
    if raw[:1] != b"{":
        return _load_tiktoken_ranks(raw, path)
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GptlabError(f"{path}: corrupt tokenizer file, not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != "gptlab-tokenizer":
        raise GptlabError(f"{path}: not a gptlab tokenizer file (no \"format\": \"gptlab-tokenizer\")")
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


def _load_tiktoken_ranks(raw: bytes, path: Path) -> BPETokenizer:
    import base64

    ranks: dict[bytes, int] = {}
    try:
        for lineno, line in enumerate(raw.decode("ascii").splitlines(), start=1):
            if not line:
                continue
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
    except (ValueError, UnicodeDecodeError):
        raise GptlabError(f"{path}: not a gptlab tokenizer (JSON) or tiktoken ranks file ('base64 rank' lines)") from None
    from gptlab.tokenizer.base import ENDOFTEXT

    return BPETokenizer(ranks, {ENDOFTEXT: max(ranks.values()) + 1}, name=path.stem)
