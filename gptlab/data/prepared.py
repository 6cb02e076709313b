"""Reading a folder written by ``gptlab prepare``: token files as memmaps, random and sequential windows.

Nothing is loaded up front: ``np.memmap`` maps the files and each batch reads only the pages its
windows touch, so the corpus may be larger than memory (nanoGPT's ``get_batch``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gptlab.data.windows import count_windows
from gptlab.errors import GptlabError
from gptlab.tokenizer.base import Tokenizer

_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


class TokenFile:
    """One flat file of token ids (``train.bin`` or ``val.bin``), memory-mapped read-only.

    ``n_tokens``, when given (from meta.json), must match the file's size: a truncated or swapped
    file is an error naming it, not silently shorter data.
    """

    def __init__(self, path: str | os.PathLike, dtype: str = "uint16", n_tokens: int | None = None):
        self.path = Path(path)
        if dtype not in _DTYPES:
            raise GptlabError(f"{self.path}: token dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.dtype = np.dtype(_DTYPES[dtype])
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise GptlabError(f"{self.path}: cannot open token file ({exc.strerror})") from None
        if size % self.dtype.itemsize or (n_tokens is not None and size != n_tokens * self.dtype.itemsize):
            if n_tokens is not None:
                expected = f"{n_tokens} {dtype} tokens = {n_tokens * self.dtype.itemsize} bytes"
            else:
                expected = f"a multiple of {self.dtype.itemsize}"
            raise GptlabError(
                f"{self.path}: has {size} bytes, expected {expected}; the file is truncated or not from this preparation"
            )
        # np.memmap cannot map an empty file; an empty split is just an empty array.
        self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r") if size else np.empty(0, dtype=self.dtype)

    def __len__(self) -> int:
        return len(self.tokens)

    def _need(self, block_size: int) -> None:
        if block_size < 1:
            raise GptlabError(f"block size must be at least 1, got {block_size}")
        if len(self) <= block_size:
            raise GptlabError(
                f"{self.path}: has {len(self)} tokens, but one window of block size {block_size} needs {block_size + 1}"
            )

    def _gather(
        self, starts: np.ndarray, block_size: int, device: str | torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows at ``starts``: x = tokens[s : s+T], y = tokens[s+1 : s+T+1], as int64 tensors."""
        rows = self.tokens[starts[:, None] + np.arange(block_size + 1)]  # one gather for the batch
        both = torch.from_numpy(rows.astype(np.int64))
        x, y = both[:, :-1].contiguous(), both[:, 1:].contiguous()
        device = torch.device(device)
        if device.type == "cuda":  # pinned memory lets the copy overlap with compute
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def sample_batch(
        self,
        batch_size: int,
        block_size: int,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` windows at uniformly random positions: ``(x, y)``, int64 ``[batch_size, block_size]``.

        ``y`` is ``x`` shifted by one token. Randomness comes from ``generator``, else a fresh one
        seeded with ``seed``, else torch's global generator.
        """
        self._need(block_size)
        if batch_size < 1:
            raise GptlabError(f"batch size must be at least 1, got {batch_size}")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(len(self) - block_size, (batch_size,), generator=generator).numpy()
        return self._gather(starts, block_size, device)

    def num_windows(self, block_size: int, stride: int | None = None) -> int:
        """How many windows :meth:`iter_windows` yields (the book's ``range(0, n - T, stride)``)."""
        return count_windows(len(self), block_size, block_size if stride is None else stride)

    def iter_windows(
        self,
        block_size: int,
        stride: int | None = None,
        *,
        batch_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every window in order, ``stride`` apart (default ``block_size``: no overlap), in batches.

        Windows start at ``range(0, len - block_size, stride)``, as in the book's dataset; the last
        batch may be smaller than ``batch_size``. Meant for evaluation: each token is seen once.
        """
        self._need(block_size)  # checked now, not at the first next()
        stride = block_size if stride is None else stride
        if stride < 1 or batch_size < 1:
            raise GptlabError(f"stride and batch size must be at least 1, got {stride} and {batch_size}")
        starts = np.arange(0, len(self) - block_size, stride)
        return (self._gather(starts[i : i + batch_size], block_size, device) for i in range(0, len(starts), batch_size))


class PreparedData:
    """A folder written by :func:`gptlab.data.prep.prepare`: ``meta.json``, ``train.bin``, ``val.bin``.

    ``data.train`` / ``data.val`` are :class:`TokenFile` s; :meth:`tokenizer` loads the tokenizer the
    ids came from. A missing or corrupt ``meta.json`` is a :class:`GptlabError` naming it.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        meta_path = self.dir / "meta.json"
        if not self.dir.is_dir():
            raise GptlabError(f"{self.dir}: no such folder (make one with: gptlab prepare --data ... --out {self.dir})")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GptlabError(
                f"{meta_path}: not found; is {self.dir} a folder written by gptlab prepare (or was it interrupted)?"
            ) from None
        except (OSError, ValueError) as exc:
            raise GptlabError(f"{meta_path}: corrupt, not valid JSON ({exc})") from None
        from gptlab.data.prep import META_FORMAT

        meta = self.meta
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
            raise GptlabError(f"{meta_path}: not a gptlab prepare meta file (no \"format\": \"{META_FORMAT}\")")
        try:
            dtype = meta["dtype"]
            self.n_vocab = int(meta["n_vocab"])
            self.eot_id = meta.get("eot_id")
            self.train = TokenFile(self.dir / meta["train"]["file"], dtype, int(meta["train"]["tokens"]))
            self.val = TokenFile(self.dir / meta["val"]["file"], dtype, int(meta["val"]["tokens"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, GptlabError):
                raise
            raise GptlabError(f"{meta_path}: corrupt, missing or bad field ({type(exc).__name__}: {exc})") from None

    def split(self, name: str) -> TokenFile:
        """The ``"train"`` or ``"val"`` token file."""
        if name not in ("train", "val"):
            raise GptlabError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def tokenizer(self) -> Tokenizer:
        """The tokenizer these ids come from (GPT-2's, or the copy saved in the folder)."""
        from gptlab.tokenizer.registry import gpt2_tokenizer, load_tokenizer

        ref = self.meta.get("tokenizer") or {}
        if "file" in ref:
            return load_tokenizer(self.dir / ref["file"])
        if ref.get("name") == "gpt2":
            return gpt2_tokenizer()
        raise GptlabError(f"{self.dir / 'meta.json'}: tokenizer field names neither a file nor 'gpt2': {ref!r}")

    def sample_batch(
        self,
        batch_size: int,
        block_size: int,
        *,
        split: str = "train",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows from one split; see :meth:`TokenFile.sample_batch`."""
        return self.split(split).sample_batch(batch_size, block_size, generator=generator, seed=seed, device=device)

    def iter_windows(
        self,
        block_size: int,
        stride: int | None = None,
        *,
        split: str = "val",
        batch_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sequential windows of one split (default ``val``); see :meth:`TokenFile.iter_windows`."""
        return self.split(split).iter_windows(block_size, stride, batch_size=batch_size, device=device)

    def __repr__(self) -> str:
        return f"PreparedData({str(self.dir)!r}, train={len(self.train)}, val={len(self.val)}, n_vocab={self.n_vocab})"
