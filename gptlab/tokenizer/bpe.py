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
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import regex

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text
from gptlab.tokenizer.base import ENDOFTEXT, Tokenizer
from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN
from gptlab.tokenizer.byte_alphabet import bytes_to_unicode
from gptlab.tokenizer.files import FORMAT, read_tokenizer_file
from gptlab.tokenizer.hf_writer import to_tokenizer_json
from gptlab.tokenizer.added import AddedToken, AddedVocabulary
from gptlab.tokenizer.merge import (
    LONG_PIECE,
    PAIR_SHIFT,
    byte_pair_table,
    merge_pair_piece,
    merge_pairs_bytes,
    merge_piece,
)
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


class _PairPieceCache(dict):
    """The same cache for merge-list BPE (Hugging Face's rule, see :mod:`gptlab.tokenizer.merge`)."""

    __slots__ = ("vocab", "pairs", "byte_ids", "whole", "byte_pairs")

    def __init__(self, vocab: dict[bytes, int], pairs: dict[int, int], byte_ids: list[int | None], whole: bool):
        super().__init__()
        self.vocab, self.pairs, self.byte_ids, self.whole = vocab, pairs, byte_ids, whole
        # With every byte in the vocabulary, short pieces start from a table of byte pairs.
        self.byte_pairs = byte_pair_table(byte_ids, pairs) if None not in byte_ids else None

    def __missing__(self, piece: str) -> tuple[int, ...]:
        data = piece.encode("utf-8")
        idx = self.vocab.get(data) if self.whole else None  # `ignore_merges`: a whole-word token wins
        if idx is not None:
            ids: tuple[int, ...] = (idx,)
        elif self.byte_pairs is not None and len(data) <= LONG_PIECE:
            ids = tuple(merge_pairs_bytes(data, self.byte_ids, self.byte_pairs, self.pairs))
        else:
            byte_ids = self.byte_ids
            start = [byte_ids[b] for b in data]
            if None in start:  # a byte the vocabulary lacks is dropped, as `tokenizers` drops it
                start = [i for i in start if i is not None]
            ids = tuple(merge_pair_piece(start, self.pairs))
        if len(self) < _CACHE_LIMIT:
            self[piece] = ids
        return ids


def ranks_follow_merges(vocab: dict[bytes, int], merges: list[tuple[bytes, bytes]]) -> bool:
    """Whether ``merges`` is a plain BPE training record of ``vocab``: each merge makes a new token,
    with increasing ids above every single byte's. Then a token's id is its merge priority and
    tiktoken's rule (used with ``mergeable_ranks``) encodes as the merge list does; GPT-2's files and
    gptlab's own trained tokenizers are like this, converted vocabularies such as Llama 3's are not.
    """
    if any(bytes([b]) not in vocab for b in range(256)):
        return False
    last = max(vocab[bytes([b])] for b in range(256))
    seen = 0
    for left, right in merges:
        idx = vocab.get(left + right)
        if idx is None or idx <= last:
            return False
        last = idx
        seen += 1
    return seen == sum(1 for tok in vocab if len(tok) > 1)


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer (GPT-2's, or one trained with :meth:`train`).

    Args:
        mergeable_ranks: token bytes -> id for every ordinary token; must contain all 256 bytes.
        special_tokens: special token text -> id (ids must not collide with ordinary tokens).
        pattern: the pre-tokenization regex (``regex`` module syntax).
        name: a label shown in logs and saved with the tokenizer.

    A model's own tokenizer (read from ``tokenizer.json`` or a GGUF vocabulary, see
    :mod:`gptlab.tokenizer.hf_json`) also brings, as keywords:
        merges: the merge list, in priority order; encoding then follows Hugging Face's merge-list
            rule (unless the list is a plain training record, see :func:`ranks_follow_merges`).
        ignore_merges: a pre-token that is itself a token is that token (Llama 3).
        pretokenizer: an object with ``split(text) -> pieces`` replacing ``pattern``'s.
        normalizer: ``str -> str`` applied to text between added tokens (Qwen: NFC).
        added_tokens: every added token with its flags; the special ones make ``special_tokens``.
        pipeline: the file's ``normalizer``/``pre_tokenizer``/``post_processor``/``decoder`` objects,
            written back unchanged by :meth:`save`.
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        pattern: str | None = GPT2_PATTERN,
        name: str = "bpe",
        *,
        merges: list[tuple[bytes, bytes]] | None = None,
        ignore_merges: bool = False,
        pretokenizer=None,
        normalizer: Callable[[str], str] | None = None,
        added_tokens: list[AddedToken] | None = None,
        pipeline: dict[str, Any] | None = None,
    ):
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        # A model's merge list may lack bytes: StarCoder's has no tokens for 0xC0, 0xC1 and 0xF1, 0xF5-0xFF
        # (never or rarely in UTF-8 text); `tokenizers` then drops such a byte, and so do we.
        if missing and merges is None:
            raise GptlabError(
                f"BPE vocabulary lacks {len(missing)} of the 256 single-byte tokens "
                f"(first missing byte: {missing[0]}); a byte-level vocabulary needs all of them"
            )
        self.mergeable_ranks = mergeable_ranks
        explicit_added = added_tokens is not None
        if added_tokens is not None:
            special_tokens = {t.content: t.id for t in added_tokens if t.special}
        else:
            added_tokens = [AddedToken(idx, text) for text, idx in (special_tokens or {}).items()]
        self.special_tokens = dict(special_tokens or {})
        self.added_tokens = sorted(added_tokens, key=lambda t: t.id)
        self.pattern = pattern
        self.name = name
        self.normalizer = normalizer
        self.pipeline = pipeline
        try:
            self._pretokenizer = pretokenizer if pretokenizer is not None else Pretokenizer(pattern)
        except regex.error as exc:
            raise GptlabError(f"pre-tokenization pattern does not compile: {exc}") from None
        self._decoder: dict[int, bytes] = {rank: tok for tok, rank in mergeable_ranks.items()}
        if len(self._decoder) != len(mergeable_ranks):
            raise GptlabError("BPE vocabulary has two tokens with the same id")
        for tok in self.added_tokens:
            # A model's tokenizer may give an added token the id of a vocabulary entry (see hf_json);
            # for tokenizers made here a collision is a mistake.
            if tok.id in self._decoder and not explicit_added:
                raise GptlabError(f"special token {tok.content!r} has id {tok.id}, which an ordinary token already uses")
            self._decoder[tok.id] = tok.content.encode("utf-8")
        # Computed once: the vocabulary is fixed from here on, and callers (the server per request, the
        # evaluation harness per batch) read n_vocab often; max() over 150k ids takes milliseconds.
        self._n_vocab = max(self._decoder) + 1
        # Added tokens need their own matcher when some are not special (they always match), carry
        # flags, or are matched after normalization; otherwise the base class's special-token split does.
        needs_matcher = any(not t.special or t.lstrip or t.rstrip or t.single_word for t in self.added_tokens) or (
            normalizer is not None and any(t.normalized for t in self.added_tokens))
        self._added = AddedVocabulary(self.added_tokens) if needs_matcher else None
        if merges is not None and ranks_follow_merges(mergeable_ranks, merges):
            merges = None
        self.merges = merges
        self.ignore_merges = ignore_merges
        if merges is None:
            self._cache: dict = _PieceCache(mergeable_ranks)
        else:
            pairs: dict[int, int] = {}
            for priority, (left, right) in enumerate(merges):
                try:
                    key = mergeable_ranks[left] << PAIR_SHIFT | mergeable_ranks[right]
                    merged = mergeable_ranks[left + right]
                except KeyError:
                    raise GptlabError(
                        f"merge {priority} ({left!r} + {right!r}) uses or makes a token that is not in the vocabulary"
                    ) from None
                pairs.setdefault(key, priority << PAIR_SHIFT | merged)  # a repeated pair keeps its first priority
            byte_ids = [mergeable_ranks.get(bytes([b])) for b in range(256)]
            self._cache = _PairPieceCache(mergeable_ranks, pairs, byte_ids, ignore_merges)

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
    def clear_cache(self) -> None:
        """Forget every remembered pre-token (a benchmark's cold start)."""
        self._cache.clear()
        for memo in getattr(self._pretokenizer, "_memo", ()):
            memo.clear()

    @property
    def has_added_matcher(self) -> bool:
        """Whether added tokens are matched with Hugging Face's rules (some are always matched, or carry flags)."""
        return self._added is not None

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with no special-token handling (its text is encoded as ordinary text).

        Added tokens that are not special (a model's always-whole strings) still match, as in
        ``tokenizers``.
        """
        if self._added is not None:
            return self._encode_added(text, frozenset())
        return self._encode_text(text)

    def _encode_text(self, text: str) -> list[int]:
        """Normalize, pre-tokenize and merge one stretch of text that holds no added token."""
        if self.normalizer is not None:
            text = self.normalizer(text)
        try:
            return list(chain.from_iterable(map(self._cache.__getitem__, self._pretokenizer.split(text))))
        except UnicodeEncodeError:
            # Lone surrogates cannot be UTF-8 encoded; replace them exactly as tiktoken does.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return list(chain.from_iterable(map(self._cache.__getitem__, self._pretokenizer.split(text))))

    def _encode_specials(self, text, allowed_special, disallowed_special) -> list[int]:
        if self._added is None:
            return super()._encode_specials(text, allowed_special, disallowed_special)
        allowed = self.allowed_specials(allowed_special, disallowed_special, text) if self.special_tokens else set()
        return self._encode_added(text, frozenset(allowed))

    def _encode_added(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Hugging Face's order: raw-text added tokens, then normalization, then normalized ones, then BPE."""
        ids: list[int] = []
        added = self._added
        for segment, idx in added.split(text, allowed, normalized=False):
            if idx is not None:
                ids.append(idx)
                continue
            if self.normalizer is not None:
                segment = self.normalizer(segment)
            for piece, idx2 in added.split(segment, allowed, normalized=True):
                if idx2 is not None:
                    ids.append(idx2)
                else:
                    try:
                        ids.extend(chain.from_iterable(map(self._cache.__getitem__, self._pretokenizer.split(piece))))
                    except UnicodeEncodeError:
                        piece = piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                        ids.extend(chain.from_iterable(map(self._cache.__getitem__, self._pretokenizer.split(piece))))
        return ids

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
    def save(self, path: str | os.PathLike, format: str = "hf") -> None:
        """Save the tokenizer.

        ``format="hf"`` (the default) writes a Hugging Face ``tokenizer.json`` that ``tokenizers`` and
        transformers' ``PreTrainedTokenizerFast`` load with identical ids (see
        :mod:`gptlab.tokenizer.hf_json`; :func:`gptlab.tokenizer.load_tokenizer` reads it back).
        ``format="gptlab"`` writes gptlab's older JSON (ranks, pattern, specials), which tokenizers
        read from a model's files cannot use. ``format="tiktoken"`` writes the ``base64-token rank``
        lines that ``tiktoken.load.load_tiktoken_bpe`` reads; pass ``pattern`` and ``special_tokens``
        to ``tiktoken.Encoding`` yourself (they are not in that format).
        """
        if format == "hf":
            atomic_write_text(path, json.dumps(to_tokenizer_json(self), ensure_ascii=False))
            return
        if self.pattern is None or self.merges is not None or self.normalizer is not None or self._added is not None:
            raise GptlabError(
                f"the {self.name} tokenizer comes from a model's tokenizer files; it can only be saved as "
                "a Hugging Face tokenizer.json (format 'hf')"
            )
        if format == "tiktoken":
            lines = (
                f"{base64.b64encode(tok).decode('ascii')} {rank}"
                for tok, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
            )
            atomic_write_text(path, "\n".join(lines) + "\n")
            return
        if format != "gptlab":
            raise GptlabError(f"unknown tokenizer file format {format!r} (expected 'hf', 'gptlab' or 'tiktoken')")
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
        """Load a BPE tokenizer written by :meth:`save` (tokenizer.json, gptlab JSON, tiktoken ranks)."""
        path, content = read_tokenizer_file(path)
        if isinstance(content, bytes):
            return cls._from_tiktoken_ranks(content, path)
        if "model" in content:
            raise GptlabError(f"{path}: a Hugging Face tokenizer.json; read it with gptlab.tokenizer.load_tokenizer "
                              "(which also reads the tokenizer_config.json beside it)")
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
        if self.pattern is None or self.merges is not None or self.normalizer is not None or self._added is not None:
            return None  # a model's own tokenizer: tiktoken cannot express its rules
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
