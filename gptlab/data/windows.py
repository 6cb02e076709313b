"""Sliding windows over one token sequence: the book's ``GPTDatasetV1`` and ``create_dataloader_v1``.

The book builds two tensors per window up front. Here the dataset keeps one 1-D tensor of ids and
``__getitem__`` returns slices of it (views sharing its storage), so memory stays at one copy of the
ids however small the stride. The windows are the book's exactly: one starts at every
``i in range(0, len(ids) - max_length, stride)``; its input is ``ids[i : i + max_length]`` and its
target the same window shifted one token to the right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.errors import GptlabError
from gptlab.tokenizer.base import ENDOFTEXT, Tokenizer


def as_id_tensor(ids: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    """``ids`` as a 1-D int64 tensor; an int64 tensor or array is shared, not copied."""
    if isinstance(ids, torch.Tensor):
        t = ids
    elif isinstance(ids, np.ndarray):
        t = torch.from_numpy(ids if ids.dtype == np.int64 else ids.astype(np.int64))
    else:
        t = torch.tensor(list(ids), dtype=torch.int64)
    if t.dim() != 1:
        raise GptlabError(f"token ids must be a 1-D sequence, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise GptlabError(f"token ids must be integers, got dtype {t.dtype}")
    return t if t.dtype == torch.int64 else t.to(torch.int64)


def count_windows(n_tokens: int, max_length: int, stride: int) -> int:
    """How many windows the book's loop ``range(0, n_tokens - max_length, stride)`` makes."""
    return len(range(0, n_tokens - max_length, stride))


class SlidingWindowDataset(Dataset):
    """Input/target windows of ``max_length`` tokens every ``stride`` tokens, as views of one tensor.

    ``dataset[i]`` is ``(ids[s : s + max_length], ids[s + 1 : s + max_length + 1])`` with
    ``s = i * stride``. Raises :class:`GptlabError` if the ids are too short for one window.
    """

    def __init__(self, token_ids: torch.Tensor | np.ndarray | Sequence[int], max_length: int, stride: int):
        if max_length < 1:
            raise GptlabError(f"max_length must be at least 1, got {max_length}")
        if stride < 1:
            raise GptlabError(f"stride must be at least 1, got {stride}")
        self.ids = as_id_tensor(token_ids)
        if len(self.ids) <= max_length:
            raise GptlabError(
                f"the text has {len(self.ids)} tokens, but one window of max_length {max_length} needs "
                f"{max_length + 1} (inputs plus the next token as target); use a shorter max_length or more text"
            )
        self.max_length = max_length
        self.stride = stride
        self._len = count_windows(len(self.ids), max_length, stride)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        start = index * self.stride
        return self.ids[start : start + self.max_length], self.ids[start + 1 : start + self.max_length + 1]


def encode_for_windows(text: str, tokenizer: Tokenizer | str | None = None) -> list[int]:
    """Encode ``text`` as the book does: ``<|endoftext|>`` in the text becomes the special id."""
    from gptlab.tokenizer.registry import get_tokenizer, gpt2_tokenizer

    if tokenizer is None:
        tokenizer = gpt2_tokenizer()
    elif isinstance(tokenizer, str):
        tokenizer = get_tokenizer(tokenizer, corpus=text)
    allowed = {ENDOFTEXT} if ENDOFTEXT in tokenizer.special_tokens else frozenset()
    return tokenizer.encode(text, allowed_special=allowed)


def create_dataloader(
    ids_or_text: str | torch.Tensor | np.ndarray | Sequence[int],
    tokenizer: Tokenizer | str | None = None,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
) -> DataLoader:
    """A DataLoader of ``(inputs, targets)`` batches, shaped ``[batch_size, max_length]`` (the book's v1).

    ``ids_or_text`` is text (encoded with ``tokenizer``: a Tokenizer, a name for
    :func:`gptlab.tokenizer.get_tokenizer`, or None for GPT-2) or token ids. ``seed`` makes the
    shuffled order reproducible (a private ``torch.Generator``; the global RNG is not touched).
    """
    if batch_size < 1:
        raise GptlabError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise GptlabError(f"num_workers must be 0 or more, got {num_workers}")
    ids = encode_for_windows(ids_or_text, tokenizer) if isinstance(ids_or_text, str) else ids_or_text
    dataset = SlidingWindowDataset(ids, max_length, stride)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )
