"""Stage 2: data sets, token windows, and prepared (memory-mapped) corpora.

* :mod:`~gptlab.data.registry`: named data sets (download once, sha256-checked, found offline).
* :mod:`~gptlab.data.corpus`: sources as documents (files, folders, ``python-stdlib``).
* :mod:`~gptlab.data.windows`: the book's sliding-window dataset and ``create_dataloader``.
* :mod:`~gptlab.data.prep`: ``gptlab prepare``, text -> ``train.bin``/``val.bin`` + ``meta.json``.
* :mod:`~gptlab.data.prepared`: :class:`PreparedData`, random and sequential windows over those files.

Names are imported lazily, so that ``import gptlab.data.registry`` (the tokenizers need it) does not
pull in torch.
"""

from __future__ import annotations

import importlib

from gptlab.data.registry import DATASETS, dataset_path, read_text

_LAZY = {
    "CORPORA": "gptlab.data.corpus",
    "iter_documents": "gptlab.data.corpus",
    "SlidingWindowDataset": "gptlab.data.windows",
    "create_dataloader": "gptlab.data.windows",
    "prepare": "gptlab.data.prep",
    "PreparedData": "gptlab.data.prepared",
    "TokenFile": "gptlab.data.prepared",
}

__all__ = ["DATASETS", "dataset_path", "read_text", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
