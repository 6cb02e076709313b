"""Byte-level BPE: GPT-2's tokenizer, and tokenizers of the same kind trained on your own text.

A BPE vocabulary here is ``mergeable_ranks``: token bytes -> rank, where every single byte is a token
and the rank of a merged token is also its id. Encoding (see :mod:`gptlab.tokenizer.merge`) splits text
into pre-tokens with a regex, then merges each pre-token's bytes lowest-rank-first. This is exactly
tiktoken's model, so a vocabulary made here runs under tiktoken and vice versa.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import regex

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text
from gptlab.tokenizer.base import ENDOFTEXT, Tokenizer
from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN
from gptlab.tokenizer.files import FORMAT, read_tokenizer_file
from gptlab.tokenizer.merge import merge_piece
from gptlab.tokenizer.pretokenize import Pretokenizer
from gptlab.tokenizer.train import train_bpe

# Caching a pre-token's ids turns encoding of real text into mostly dictionary lookups. The cap
# bounds memory on huge corpora; past it, new pieces are encoded but not remembered.
_CACHE_LIMIT = 1 << 20


class _PieceCache(dict):
    """pre-token (str) -> tuple of ids; a miss runs BPE. ``__missing__`` keeps the hit path in C."""

    __slots__ = ("ranks",)

    def __init__(self, ranks: dict[bytes, int]):
        super().__init__()
        self.ranks = ranks

    def __missing__(self, piece: str) -> tuple[int, ...]:
        data = piece.encode("utf-8")
        rank = self.ranks.get(data)
        ids = (rank,) if rank is not None else tuple(merge_piece(data, self.ranks))
        if len(self) < _CACHE_LIMIT:
            self[piece] = ids
        return ids


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    ``encoder.json`` and ``vocab.bpe`` store tokens as text in which each byte is written as one
    character: printable Latin-1 bytes as themselves, the others as characters from U+0100 upward.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer (GPT-2's, or one trained with :meth:`train`).

    Args:
        mergeable_ranks: token bytes -> id for every ordinary token; must contain all 256 bytes.
        special_tokens: special token text -> id (ids must not collide with ordinary tokens).
        pattern: the pre-tokenization regex (``regex`` module syntax).
        name: a label shown in logs and saved with the tokenizer.
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        name: str = "bpe",
    ):
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing:
            raise GptlabError(
                f"BPE vocabulary lacks {len(missing)} of the 256 single-byte tokens "
                f"(first missing byte: {missing[0]}); a byte-level vocabulary needs all of them"
            )
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self.name = name
        try:
            self._pretokenizer = Pretokenizer(pattern)
        except regex.error as exc:
            raise GptlabError(f"pre-tokenization pattern does not compile: {exc}") from None
        self._decoder: dict[int, bytes] = {rank: tok for tok, rank in mergeable_ranks.items()}
        if len(self._decoder) != len(mergeable_ranks):
            raise GptlabError("BPE vocabulary has two tokens with the same id")
        for text, idx in self.special_tokens.items():
            if idx in self._decoder:
                raise GptlabError(f"special token {text!r} has id {idx}, which an ordinary token already uses")
            self._decoder[idx] = text.encode("utf-8")
        self._cache = _PieceCache(mergeable_ranks)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_gpt2(cls, directory: str | os.PathLike) -> BPETokenizer:
        """GPT-2's tokenizer from a folder holding OpenAI's ``encoder.json`` and ``vocab.bpe``."""
        directory = Path(directory)
        enc_path, bpe_path = directory / "encoder.json", directory / "vocab.bpe"
        for p in (enc_path, bpe_path):
            if not p.is_file():
                raise GptlabError(f"{p}: not found (GPT-2's vocabulary needs encoder.json and vocab.bpe)")
        try:
            encoder = json.loads(enc_path.read_text(encoding="utf-8"))
            if not isinstance(encoder, dict):
                raise ValueError("expected a JSON object of token -> id")
        except (ValueError, UnicodeDecodeError) as exc:
            raise GptlabError(f"{enc_path}: not a GPT-2 encoder.json ({exc})") from None
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        try:
            ranks: dict[bytes, int] = {}
            special: dict[str, int] = {}
            for text, idx in encoder.items():
                if text == ENDOFTEXT:
                    special[text] = int(idx)
                else:
                    ranks[bytes(byte_decoder[c] for c in text)] = int(idx)
        except (KeyError, TypeError, ValueError) as exc:
            raise GptlabError(f"{enc_path}: token text uses a character outside GPT-2's byte alphabet ({exc})") from None
        _check_merges(bpe_path, ranks, byte_decoder)
        return cls(ranks, special, GPT2_PATTERN, name="gpt2")

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        special_tokens: Iterable[str] = (ENDOFTEXT,),
        pattern: str = GPT2_PATTERN,
        *,
        min_frequency: int = 2,
        progress: bool = False,
        name: str = "bpe",
    ) -> BPETokenizer:
        """Train a byte-level BPE tokenizer with exactly ``vocab_size`` ids (specials included).

        ``text`` may be one string or an iterable of strings (documents, lines, file chunks), which is
        streamed: only pre-token counts are kept in memory. Raises :class:`GptlabError` if the text has
        too few distinct pairs to reach ``vocab_size`` (the message says how many it could reach).
        """
        special_tokens = list(special_tokens)
        ranks = train_bpe(
            text,
            vocab_size - len(special_tokens),
            pattern=pattern,
            min_frequency=min_frequency,
            progress=progress,
            special_tokens=special_tokens,
        )
        special = {tok: len(ranks) + i for i, tok in enumerate(special_tokens)}
        return cls(ranks, special, pattern, name=name)

    # ----------------------------------------------------------------------------- encode / decode
    @property
    def n_vocab(self) -> int:
        return max(self._decoder) + 1

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with no special-token handling (its text is encoded as ordinary text)."""
        try:
            return list(chain.from_iterable(map(self._cache.__getitem__, self._pretokenizer.split(text))))
        except UnicodeEncodeError:
            # Lone surrogates cannot be UTF-8 encoded; replace them exactly as tiktoken does.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return list(chain.from_iterable(map(self._cache.__getitem__, self._pretokenizer.split(text))))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``ids``; an id outside the vocabulary raises :class:`GptlabError`."""
        try:
            return b"".join(map(self._decoder.__getitem__, ids))
        except KeyError as exc:
            raise GptlabError(f"token id {exc.args[0]} is not in the vocabulary (0..{self.n_vocab - 1})") from None

    def token_bytes(self, idx: int) -> bytes:
        """The bytes of one token id."""
        return self.decode_bytes([idx])

    # ----------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike, format: str = "gptlab") -> None:
        """Save the tokenizer.

        ``format="gptlab"`` writes a JSON file that :func:`gptlab.tokenizer.load_tokenizer` (and
        :meth:`load`) read back, pattern and special tokens included. ``format="tiktoken"`` writes
        the ``base64-token rank`` lines that ``tiktoken.load.load_tiktoken_bpe`` reads; pass
        ``pattern`` and ``special_tokens`` to ``tiktoken.Encoding`` yourself (they are not in that format).
        """
        if format == "tiktoken":
            lines = (
                f"{base64.b64encode(tok).decode('ascii')} {rank}"
                for tok, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
            )
            atomic_write_text(path, "\n".join(lines) + "\n")
            return
        if format != "gptlab":
            raise GptlabError(f"unknown tokenizer file format {format!r} (expected 'gptlab' or 'tiktoken')")
        payload = {
            "format": FORMAT,
            "version": 1,
            "type": "bpe",
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "mergeable_ranks": [
                [base64.b64encode(tok).decode("ascii"), rank]
                for tok, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
            ],
        }
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load a BPE tokenizer written by :meth:`save` (gptlab JSON, or a tiktoken ranks file)."""
        path, content = read_tokenizer_file(path)
        if isinstance(content, bytes):
            return cls._from_tiktoken_ranks(content, path)
        if content.get("type") != "bpe":
            raise GptlabError(f"{path}: holds a {content.get('type')} tokenizer, not a BPE tokenizer")
        return cls._from_payload(content, str(path))

    @classmethod
    def _from_payload(cls, payload: dict, path: str) -> BPETokenizer:
        try:
            ranks = {base64.b64decode(tok, validate=True): int(rank) for tok, rank in payload["mergeable_ranks"]}
            special = {str(k): int(v) for k, v in payload.get("special_tokens", {}).items()}
            return cls(ranks, special, payload.get("pattern", GPT2_PATTERN), name=payload.get("name", "bpe"))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, GptlabError):
                raise GptlabError(f"{path}: {exc}") from None
            raise GptlabError(f"{path}: corrupt BPE tokenizer file ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_tiktoken_ranks(cls, raw: bytes, path: Path) -> BPETokenizer:
        """A tokenizer from a tiktoken ranks file's bytes (``base64-token rank`` lines), GPT-2's pattern."""
        ranks: dict[bytes, int] = {}
        try:
            for line in raw.decode("ascii").splitlines():
                if not line:
                    continue
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            if not ranks:
                raise ValueError("no ranks")
        except (ValueError, UnicodeDecodeError):
            raise GptlabError(f"{path}: not a gptlab tokenizer (JSON) or tiktoken ranks file ('base64 rank' lines)") from None
        return cls(ranks, {ENDOFTEXT: max(ranks.values()) + 1}, name=path.stem)

    def to_tiktoken(self):
        """A ``tiktoken.Encoding`` with this vocabulary, pattern and specials (None if unavailable)."""
        try:
            import tiktoken
        except ImportError:
            return None
        try:
            return tiktoken.Encoding(
                self.name,
                pat_str=self.pattern,
                mergeable_ranks=self.mergeable_ranks,
                special_tokens=self.special_tokens,
                explicit_n_vocab=None,
            )
        except Exception:  # a pattern tiktoken's regex engine rejects: fall back to ours
            return None

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, n_vocab={self.n_vocab}, special_tokens={self.special_tokens})"


def _check_merges(bpe_path: Path, ranks: dict[bytes, int], byte_decoder: dict[str, int]) -> None:
    """Check that ``vocab.bpe`` lists merges whose results have increasing ids in ``encoder.json``.

    The encoder uses token ranks (ids) directly; this check catches a vocab.bpe and encoder.json
    that do not belong together, or a truncated file, with a message naming the file and line.
    """
    try:
        lines = bpe_path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise GptlabError(f"{bpe_path}: not UTF-8 text ({exc.reason})") from None
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = [ln for ln in lines if ln]
    expected = len(ranks) - 256
    if len(merges) != expected:
        raise GptlabError(
            f"{bpe_path}: has {len(merges)} merges but encoder.json has {len(ranks)} tokens "
            f"(expected {expected} merges); the two files do not belong together or one is truncated"
        )
    last = 255
    for lineno, line in enumerate(merges, start=2):
        try:
            left, right = line.split(" ")
            merged = bytes(byte_decoder[c] for c in left + right)
            rank = ranks[merged]
        except (ValueError, KeyError):
            raise GptlabError(f"{bpe_path}:{lineno}: malformed merge line {line[:40]!r}") from None
        if rank <= last:
            raise GptlabError(f"{bpe_path}:{lineno}: merge {line!r} is out of order with encoder.json")
        last = rank
