"""Texts to token ids for a classifier: cut to the model's length, optionally ended by ``<|endoftext|>``."""

from __future__ import annotations

from collections.abc import Sequence

from gptlab.errors import GptlabError


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, append_eot: bool = False) -> list[list[int]]:
    """Token ids of each text, cut to ``max_length`` (keeping the start, as the book does).

    With ``append_eot`` every text ends with ``<|endoftext|>`` (kept even when the text is cut).
    """
    eot = tokenizer.eot_id if append_eot else None
    if append_eot and eot is None:
        raise GptlabError("--append-eot: the tokenizer has no <|endoftext|> token")
    out = []
    for i, text in enumerate(texts):
        if not text.strip():
            raise GptlabError(f"text {i + 1} is empty")
        ids = tokenizer.encode_ordinary(text)
        if eot is not None:
            ids = ids[: max_length - 1] + [eot]
        else:
            ids = ids[:max_length]
        if not ids:
            raise GptlabError(f"text {i + 1} has no tokens")
        out.append(ids)
    return out


def pad_id_for(tokenizer) -> int:
    """``<|endoftext|>`` pads, as in the book; 0 when the tokenizer has no such token (padding is masked)."""
    return tokenizer.eot_id if tokenizer.eot_id is not None else 0
