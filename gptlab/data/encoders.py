"""Bulk text -> numpy ids for ``gptlab prepare``, and the worker-process side of it.

Three engines give the same ids as ``tokenizer.encode_ordinary`` (tests check each):

* ``tiktoken``: when the tokenizer can become a ``tiktoken.Encoding`` (GPT-2 style BPE) and tiktoken
  is installed; its Rust encoder is about twice as fast as ours per core.
* ``char``: character tokenizers, through a code point -> id lookup table in numpy (no Python loop).
* ``gptlab``: the tokenizer's own ``encode_ordinary``.

Workers are forked processes: :func:`init_worker` stores the encoder they inherit (nothing is
pickled under fork), and each task is a :class:`~gptlab.data.corpus.Piece`, a file name and a byte
range, so the text itself never travels between processes.
"""

from __future__ import annotations

import weakref

import numpy as np

from gptlab.data.corpus import Piece, read_piece
from gptlab.errors import GptlabError
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.char import CharTokenizer

# tokenizer -> its tiktoken.Encoding (or None): building one costs ~30 ms for GPT-2.
_TIKTOKEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_dtype(n_vocab: int) -> np.dtype:
    """uint16 when every id fits (n_vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if n_vocab <= 1 << 16 else np.dtype(np.uint32)


def code_points(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` as a uint32 array (one per character)."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


class PieceEncoder:
    """Encodes text to a numpy array of ``dtype`` ids with the fastest exact engine available."""

    def __init__(self, tokenizer: Tokenizer, *, use_tiktoken: bool = True):
        self.tokenizer = tokenizer
        self.dtype = token_dtype(tokenizer.n_vocab)
        self.tiktoken = _tiktoken_for(tokenizer) if use_tiktoken else None
        self.lut: np.ndarray | None = None
        if self.tiktoken is not None:
            self.engine = "tiktoken"
        elif isinstance(tokenizer, CharTokenizer):
            self.engine = "char"
            cps = np.array([ord(c) for c in tokenizer.chars], dtype=np.int64)
            self.lut = np.full(int(cps.max()) + 2, -1, dtype=np.int64)  # last slot: "beyond the alphabet"
            self.lut[cps] = np.arange(len(cps))
        else:
            self.engine = "gptlab"

    def __call__(self, text: str) -> np.ndarray:
        """The ids of ``text`` (treating special-token text as ordinary text)."""
        if self.engine == "tiktoken":
            to_numpy = getattr(self.tiktoken, "encode_to_numpy", None)  # tiktoken >= 0.8
            if to_numpy is not None:
                # Same ids as encode_ordinary (no special token is allowed, none is refused), but
                # straight into a buffer: no Python int per token, ~20% faster overall.
                return to_numpy(text, allowed_special=set(), disallowed_special=()).astype(self.dtype, copy=False)
            return np.array(self.tiktoken.encode_ordinary(text), dtype=self.dtype)
        if self.engine == "char":
            return self._encode_chars(text)
        return np.array(self.tokenizer.encode_ordinary(text), dtype=self.dtype)

    def _encode_chars(self, text: str) -> np.ndarray:
        lut = self.lut
        cps = np.minimum(code_points(text), len(lut) - 1)
        ids = lut[cps]
        if len(ids) and ids.min() < 0:
            # Characters outside the alphabet: the tokenizer decides (its unk token, or its error).
            return np.array(self.tokenizer.encode_ordinary(text), dtype=self.dtype)
        return ids.astype(self.dtype)


def _tiktoken_for(tokenizer: Tokenizer):
    try:
        return _TIKTOKEN[tokenizer]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable
        return tokenizer.to_tiktoken()
    enc = tokenizer.to_tiktoken()
    _TIKTOKEN[tokenizer] = enc
    return enc


# ------------------------------------------------------------------------------------ worker side
_STATE: tuple[PieceEncoder | None, str] | None = None


def init_worker(encoder: PieceEncoder | None, errors: str) -> None:
    """Pool initializer: remember the encoder and the UTF-8 error mode for this process's tasks."""
    global _STATE
    _STATE = (encoder, errors)


def encode_piece(piece: Piece) -> np.ndarray:
    """Read, decode and encode one piece (runs in a worker)."""
    encoder, errors = _STATE
    text = read_piece(piece, errors)
    try:
        return encoder(text)
    except GptlabError as exc:  # e.g. a character outside a given char vocabulary: say where
        raise GptlabError(f"{piece.path} (bytes {piece.start}-{piece.end}): {exc}") from None


def scan_piece(piece: Piece) -> np.ndarray:
    """The distinct code points of one piece, sorted (the char tokenizer's alphabet, in parallel)."""
    _, errors = _STATE
    return np.unique(code_points(read_piece(piece, errors)))

