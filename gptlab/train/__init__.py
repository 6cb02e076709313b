"""Stage 6: pretraining — config, batches, the training loop, checkpoints, metrics, distributed runs.

Names are imported lazily, so that ``gptlab.train.config`` (which the CLI's parser reads for its
defaults) does not pay for importing torch: ``gptlab --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TrainConfig": "gptlab.train.config",
    "config_from_dict": "gptlab.train.config",
    "load_config_file": "gptlab.train.config",
    "parse_duration": "gptlab.train.config",
    "RunResult": "gptlab.train.trainer",
    "pretrain": "gptlab.train.trainer",
    "resolve_run_config": "gptlab.train.trainer",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from gptlab.train.config import TrainConfig, config_from_dict, load_config_file, parse_duration
    from gptlab.train.trainer import RunResult, pretrain, resolve_run_config


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gptlab.train' has no attribute {name!r}")
