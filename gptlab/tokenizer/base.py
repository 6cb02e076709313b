"""The interface every gptlab tokenizer shares, and GPT-2's special-token conventions."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable
from typing import AbstractSet, Literal

import regex

from gptlab.errors import GptlabError

ENDOFTEXT = "<|endoftext|>"

AllowedSpecial = Literal["all"] | AbstractSet[str]
DisallowedSpecial = Literal["all"] | Collection[str]


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses: BPE (GPT-2 style), character level, the book's word tokenizer.

    ``encode`` follows tiktoken's rules for special tokens: by default the text of any special token
    raises an error (so user text cannot smuggle in ``<|endoftext|>``); pass ``allowed_special`` to
    encode it as the special id, or ``disallowed_special=()`` to encode it as ordinary text.
    """

    name: str = "tokenizer"
    special_tokens: dict[str, int]
    # What a model's own tokenizer files add (tokenizer.json + tokenizer_config.json, or a GGUF
    # vocabulary); None/empty for tokenizers made here. ``prefix_ids``/``suffix_ids`` are what
    # ``encode(..., add_special_tokens=True)`` puts around the text (Llama 3 prefixes its BOS).
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()
    end_ids: tuple[int, ...] = ()  # more ids that end generation (a model folder's generation_config.json)

    @property
    @abstractmethod
    def n_vocab(self) -> int:
        """Number of token ids (the embedding table size a model needs): max id + 1."""

    @property
    def eot_id(self) -> int | None:
        """The id of ``<|endoftext|>``, or None if this tokenizer has no such token."""
        return self.special_tokens.get(ENDOFTEXT)

    def token_id(self, text: str | None) -> int | None:
        """The id of a special (or added) token given by its text, or None when absent or ``text`` is None."""
        return None if text is None else self.special_tokens.get(text)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a generated answer: the EOS token, ``<|endoftext|>`` and ``end_ids``, in that order."""
        ids = [self.token_id(self.eos_token), self.eot_id, *self.end_ids]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    @abstractmethod
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token text as ordinary text."""

    @abstractmethod
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The UTF-8 bytes that ``ids`` stand for (may end inside a multi-byte character)."""

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer to ``path`` (JSON), atomically; :func:`load_tokenizer` reads it back."""

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ``ids`` to text; bytes that are not valid UTF-8 become U+FFFD, as in tiktoken."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode(
        self,
        text: str,
        *,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: DisallowedSpecial = "all",
        add_special_tokens: bool = False,
    ) -> list[int]:
        """Encode ``text``; special tokens follow tiktoken's ``allowed_special``/``disallowed_special``.

        ``add_special_tokens=True`` adds what the tokenizer's post-processor adds around a text
        (``prefix_ids``/``suffix_ids``, e.g. Llama 3's ``<|begin_of_text|>``), as Hugging Face's
        ``encode`` does by default.
        """
        ids = self._encode_specials(text, allowed_special, disallowed_special)
        if add_special_tokens and (self.prefix_ids or self.suffix_ids):
            return [*self.prefix_ids, *ids, *self.suffix_ids]
        return ids

    def allowed_specials(self, allowed_special: AllowedSpecial, disallowed_special: DisallowedSpecial,
                         text: str) -> set[str]:
        """The special tokens to encode as such in ``text``; raises if ``text`` holds a disallowed one."""
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        else:
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise GptlabError(
                    f"allowed_special names {sorted(unknown)!r}, which are not special tokens of "
                    f"this tokenizer (it has {sorted(self.special_tokens)!r})"
                )
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = set(disallowed_special)
        if disallowed:
            match = _special_regex(frozenset(disallowed)).search(text)
            if match:
                raise GptlabError(
                    f"the text contains the special token {match.group()!r}, which is not allowed: "
                    f"pass allowed_special={{{match.group()!r}}} to encode it as a special token, or "
                    f"disallowed_special=() to encode it as ordinary text"
                )
        return allowed

    def _encode_specials(self, text: str, allowed_special: AllowedSpecial,
                         disallowed_special: DisallowedSpecial) -> list[int]:
        if not self.special_tokens:
            return self.encode_ordinary(text)
        allowed = self.allowed_specials(allowed_special, disallowed_special, text)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for match in _special_regex(frozenset(allowed)).finditer(text):
            ids.extend(self.encode_ordinary(text[start : match.start()]))
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    def encode_batch(self, texts: Iterable[str], **kwargs) -> list[list[int]]:
        """Encode several texts (same keyword arguments as :meth:`encode`)."""
        return [self.encode(t, **kwargs) for t in texts]

    def to_tiktoken(self):
        """A ``tiktoken.Encoding`` giving identical ids, or None if impossible (or tiktoken missing).

        Used only as an optional accelerator for bulk work (``gptlab prepare``); never required.
        """
        return None


_SPECIAL_CACHE: dict[frozenset[str], regex.Pattern] = {}


def _special_regex(tokens: frozenset[str]) -> regex.Pattern:
    """A regex that finds any of ``tokens``, longest first so overlapping names match correctly."""
    pat = _SPECIAL_CACHE.get(tokens)
    if pat is None:
        alternatives = sorted(tokens, key=len, reverse=True)
        pat = regex.compile("|".join(regex.escape(t) for t in alternatives))
        _SPECIAL_CACHE[tokens] = pat
    return pat
