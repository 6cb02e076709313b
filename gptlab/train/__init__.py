"""Stage 6: pretraining — config, batches, the training loop, checkpoints, metrics, distributed runs."""

from gptlab.train.config import TrainConfig, config_from_dict, load_config_file, parse_duration
from gptlab.train.trainer import RunResult, pretrain, resolve_run_config

__all__ = ["RunResult", "TrainConfig", "config_from_dict", "load_config_file", "parse_duration", "pretrain", "resolve_run_config"]
