"""Fine-tuning one classifier: what trains, the optimizer and schedule, and the loop over epochs.

The optimizer's parameter groups and the learning-rate curve are the pretraining trainer's own
(:mod:`gptlab.train.optim`, :mod:`gptlab.train.schedule`), with the book's chapter 6 settings: torch's
default AdamW, and a rate that warms up over ``warmup_frac`` of the steps, then stays constant or
follows a cosine down to a tenth of the peak.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gptlab.errors import GptlabError
from gptlab.finetune.classify.config import ClassifyConfig
from gptlab.finetune.classify.data import LabelMap
from gptlab.finetune.classify.model import GPTClassifier, pad_batch, set_trainable
from gptlab.finetune.classify.precision import autocast
from gptlab.finetune.classify.predict import evaluate
from gptlab.finetune.lora import apply_lora
from gptlab.train.optim import make_adamw
from gptlab.train.schedule import lr_at

__all__ = ["EncodedSplits", "fit_member", "lr_for_step", "make_classifier", "make_optimizer"]

# torch's default AdamW betas, as the book uses them (pretraining's default is (0.9, 0.95)).
TORCH_BETAS = (0.9, 0.999)
# Where each schedule ends, as a share of the peak rate: "constant" is the cosine with its floor at the peak.
_FLOOR_RATIO = {"cosine": 0.1, "constant": 1.0}


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, decay on matrices only (:func:`~gptlab.train.optim.param_groups`).

    torch's default betas and implementation: the fused kernel pretraining uses rounds differently,
    and the classification recipe's figures were measured without it.
    """
    return make_adamw(model, lr, weight_decay, betas=TORCH_BETAS, fused=False)


def lr_for_step(cfg: ClassifyConfig, step: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``, by ``cfg.schedule`` and ``cfg.warmup_frac``."""
    return lr_at(step, peak=cfg.lr, warmup_steps=int(cfg.warmup_frac * total), total_steps=total,
                 floor_ratio=_FLOOR_RATIO[cfg.schedule])


def make_classifier(gpt, cfg: ClassifyConfig, n_classes: int, seed: int) -> tuple[GPTClassifier, int]:
    """``(classifier, trainable parameter count)``: ``gpt`` with a new head (seeded) and the scope applied."""
    model = GPTClassifier(gpt, n_classes, seed=seed)
    if cfg.trainable == "lora":
        n = apply_lora(gpt, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets.split(","), cfg.lora_dropout)
    else:
        n = set_trainable(model, cfg.trainable, cfg.last_blocks)
    return model, n


@dataclass
class EncodedSplits:
    """Token ids and class ids of the splits, ready for batching."""

    x_train: list[list[int]]
    y_train: list[int]
    x_val: list[list[int]]
    y_val: list[int]
    pad_id: int
    labels: LabelMap


def fit_member(
    model: GPTClassifier, cfg: ClassifyConfig, seed: int, data: EncodedSplits, bf16: bool, member: int, t0: float,
    save: Callable[[GPTClassifier, dict[str, Any]], None] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None, progress: bool, log: Callable[[str], None],
) -> dict[str, Any]:
    """Train one classifier for ``cfg.epochs``, evaluating each epoch; leaves the best epoch's weights in
    ``model`` and returns that epoch's record. ``save(model, record)`` runs on each new best,
    ``on_epoch(record)`` after every epoch. ``member`` (0-based) and ``t0`` (when the run began) go into
    the records and log lines."""
    torch.manual_seed(seed)  # dropout
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    rng = random.Random(seed)
    x_train, y_train = data.x_train, data.y_train
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    names = data.labels.names
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    step = 0
    tag = f"member {member + 1}/{cfg.ensemble} " if cfg.ensemble > 1 else ""
    bar = tqdm(total=total, desc=f"fine-tuning {tag}".strip(), unit="step", disable=not progress, dynamic_ncols=True)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        order = list(range(len(x_train)))
        rng.shuffle(order)
        run_loss, run_n = 0.0, 0
        for b in range(steps_per_epoch):
            chunk = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            ids, mask = pad_batch([x_train[i] for i in chunk], data.pad_id)
            target = torch.tensor([y_train[i] for i in chunk])
            for g in opt.param_groups:
                g["lr"] = lr_for_step(cfg, step, total)
            with autocast(bf16):
                logits = model(ids, mask)
            loss = F.cross_entropy(logits.float(), target)
            if not torch.isfinite(loss):
                raise GptlabError(f"loss became {loss.item()} at epoch {epoch} step {b}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            run_loss += loss.item() * len(chunk)
            run_n += len(chunk)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{run_loss / run_n:.4f}")
        train_eval = list(range(len(x_train)))
        if cfg.eval_train_examples and cfg.eval_train_examples < len(train_eval):
            train_eval = train_eval[: cfg.eval_train_examples]
        m_train = evaluate(model, [x_train[i] for i in train_eval], [y_train[i] for i in train_eval], names, data.pad_id, bf16=bf16)
        m_val = evaluate(model, data.x_val, data.y_val, names, data.pad_id, bf16=bf16)
        record = {
            "epoch": epoch,
            "step": step,
            "seconds": round(time.perf_counter() - t0, 2),
            "train_loss_running": run_loss / run_n,
            "train_loss": m_train["loss"],
            "val_loss": m_val["loss"],
            "train_accuracy": m_train["accuracy"],
            "val_accuracy": m_val["accuracy"],
            "val_f1": m_val["f1"],
        }
        if cfg.ensemble > 1:
            record["member"] = member + 1
        improved = best is None or (m_val["accuracy"], -m_val["loss"]) > (best["val_accuracy"], -best["val_loss"])
        if improved:
            best = record
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if save is not None:
                save(model, record)
        line = (
            f"{tag}epoch {epoch}: train loss {m_train['loss']:.4f} acc {100 * m_train['accuracy']:.2f}%  "
            f"val loss {m_val['loss']:.4f} acc {100 * m_val['accuracy']:.2f}%{'  (best)' if improved else ''}"
        )
        bar.write(line) if progress else log(line)
        if on_epoch is not None:
            on_epoch(record)
    bar.close()
    assert best is not None and best_state is not None
    model.load_state_dict(best_state)
    return best
