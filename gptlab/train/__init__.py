"""Stage 6: pretraining — config, batches, the training loop, checkpoints, metrics, distributed runs.

Names are imported lazily, so that ``gptlab.train.config`` (which the CLI's parser reads for its
defaults) does not pay for importing torch: ``gptlab --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptlab.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "gptlab.train.config",
    "config_from_dict": "gptlab.train.config",
    "load_config_file": "gptlab.train.config",
    "parse_duration": "gptlab.train.config",
    "RunResult": "gptlab.train.trainer",
    "pretrain": "gptlab.train.trainer",
    "resolve_run_config": "gptlab.train.setup",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from gptlab.train.config import TrainConfig, config_from_dict, load_config_file, parse_duration
    from gptlab.train.setup import resolve_run_config
    from gptlab.train.trainer import RunResult, pretrain


__getattr__ = lazy_exports(__name__, _EXPORTS)
