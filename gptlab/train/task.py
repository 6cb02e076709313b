"""The trainer's extension point: a task that brings its own model, batches and weights to save.

``pretrain(cfg)`` builds everything from ``cfg`` (a corpus, a fresh model). A fine-tuning run passes
``pretrain(cfg, task=...)`` instead: the same loop, progress bar, evaluation, metrics, plots,
checkpoints and exact resume, but the model comes from ``task.build_model()`` (already loaded from
pretrained weights, adapters applied) and the batches from ``task.sampler``. ``cfg`` then supplies
only the optimisation, stop conditions, evaluation cadence and hardware settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class BatchSource(Protocol):
    """Training batches with a position a checkpoint can save (like :class:`gptlab.train.batches.EpochWindows`).

    ``next()`` returns this rank's ``(inputs, targets)`` ``[B, T]`` (targets -100 where there is no
    loss); ``batches_per_epoch`` counts optimizer-step-sized global batches, for ``epochs``.
    """

    batches_per_epoch: int

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainTask:
    """What a fine-tuning run gives the trainer instead of a corpus and a freshly initialised model.

    * ``build_model``: the starting model on the CPU (pretrained weights loaded, adapters applied,
      frozen parameters marked). It is called again on resume, so it must be deterministic given
      the seed the trainer sets before calling it.
    * ``tokenizer``: saved into the run (or referenced, for GPT-2's) so the run loads on its own.
    * ``sampler`` / ``val_batches`` / ``train_eval_batches``: training batches and the fixed
      evaluation batches (lists of ``(inputs, targets)``; the loss is the mean over targets != -100).
    * ``export_weights``: the weights written to each checkpoint's ``model.safetensors`` under the
      plain model's names (e.g. LoRA merged into the base), so a checkpoint loads like any run's.
      When set, the trainable tensors are kept in ``state.pt`` for resuming and the base weights
      come from ``build_model()`` again. None: the model's own state dict (full fine-tuning).
    * ``run_info``: extra JSON written into the run's ``config.json`` under ``"task"`` (with
      ``name``): what a resume needs to rebuild the task.
    """

    name: str
    build_model: Callable[[], torch.nn.Module]
    tokenizer: Any
    sampler: BatchSource
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    train_eval_batches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    export_weights: Callable[[torch.nn.Module], dict[str, torch.Tensor]] | None = None
    run_info: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (requires_grad), detached on the CPU, by qualified name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors saved by :func:`trainable_state` back into ``model`` (names and shapes must match)."""
    from gptlab.errors import GptlabError

    params = dict(model.named_parameters())
    for name, value in tensors.items():
        if name not in params or params[name].shape != value.shape:
            raise GptlabError(f"checkpoint: trainable tensor {name} does not fit this model")
        with torch.no_grad():
            params[name].copy_(value)
