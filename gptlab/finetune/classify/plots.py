"""The loss and accuracy plots of a classification run (one per member of an ensemble)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptlab.train.metrics import plot_curves

__all__ = ["plot_history"]


def plot_history(history: list[dict[str, Any]], out: Path, members: int) -> None:
    """``loss.png`` and ``accuracy.png`` in ``out``: the curves of every member so far, by epoch."""
    if members == 1:
        rows, loss, acc = history, ("train_loss", "val_loss"), ("train_accuracy", "val_accuracy")
    else:
        # One validation curve per member, and the members' mean on the training set (their training
        # curves lie on top of each other, so drawing each would only hide the validation ones).
        by_epoch: dict[int, dict[str, Any]] = {}
        for r in history:
            row = by_epoch.setdefault(r["epoch"], {"epoch": r["epoch"]})
            for key in ("val_loss", "val_accuracy"):
                row[f"{key} #{r['member']}"] = r[key]
            for key in ("train_loss", "train_accuracy"):
                row.setdefault(f"_{key}", []).append(r[key])
        rows = []
        for e in sorted(by_epoch):
            row = by_epoch[e]
            for key in ("train_loss", "train_accuracy"):
                values = row.pop(f"_{key}")
                row[f"{key} (mean of members)"] = sum(values) / len(values)
            rows.append(row)
        done = sorted({r["member"] for r in history})
        loss = ("train_loss (mean of members)",) + tuple(f"val_loss #{m}" for m in done)
        acc = ("train_accuracy (mean of members)",) + tuple(f"val_accuracy #{m}" for m in done)
    plot_curves(rows, out / "loss.png", x="epoch", series=loss, title="classifier loss")
    plot_curves(rows, out / "accuracy.png", x="epoch", series=acc, title="classifier accuracy", ylabel="accuracy")
