"""Stage 2: data sets, token windows, and prepared (memory-mapped) corpora.

* :mod:`~gptlab.data.registry`: named data sets (download once, sha256-checked, found offline).
* :mod:`~gptlab.data.corpus`: sources as documents (files, folders, ``python-stdlib``).
* :mod:`~gptlab.data.windows`: the book's sliding-window dataset and ``create_dataloader``.
* :mod:`~gptlab.data.prep`: ``gptlab prepare``, text -> ``train.bin``/``val.bin`` + ``meta.json``.
* :mod:`~gptlab.data.prepared`: :class:`PreparedData`, random and sequential windows over those files.
* :mod:`~gptlab.data.prompts`: prompt styles (Alpaca, Phi-3, templates) for fine-tuning and serving.

The data sets and sources are imported here, the rest lazily, so that ``import gptlab.data`` does not
pull in torch.
"""

from __future__ import annotations

from gptlab.data.corpus import CORPORA, iter_documents, read_text
from gptlab.data.registry import DATASETS, dataset_path
from gptlab.lazy import lazy_exports

_LAZY = {
    "SlidingWindowDataset": "gptlab.data.windows",
    "create_dataloader": "gptlab.data.windows",
    "prepare": "gptlab.data.prep",
    "PreparedData": "gptlab.data.prepared",
    "TokenFile": "gptlab.data.prepared",
}

__all__ = ["CORPORA", "DATASETS", "dataset_path", "iter_documents", "read_text", *_LAZY]


__getattr__ = lazy_exports(__name__, _LAZY)
