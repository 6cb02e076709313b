"""Classification metrics: accuracy, precision, recall, F1 (per class and macro) and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> list[list[int]]:
    """``m[t][p]``: how many examples of true class ``t`` were predicted as ``p``."""
    m = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(y_true, y_pred):
        m[t][p] += 1
    return m


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, their macro averages, and the confusion matrix.

    With two classes the second label is the positive one (``spam`` in ``ham``/``spam``), and
    ``precision``/``recall``/``f1`` are that class's; with more, they are the macro averages.
    A precision or recall with an empty denominator is 0 (scikit-learn's ``zero_division=0``).
    """
    n = len(labels)
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    cm = confusion_matrix(y_true, y_pred, n)
    total = len(y_true)
    correct = sum(cm[i][i] for i in range(n))
    per_class = {}
    for c, name in enumerate(labels):
        tp = cm[c][c]
        predicted = sum(cm[t][c] for t in range(n))
        actual = sum(cm[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    macro = {k: sum(v[k] for v in per_class.values()) / n for k in ("precision", "recall", "f1")}
    head = per_class[labels[1]] if n == 2 else macro
    return {
        "n": total,
        "accuracy": correct / total if total else 0.0,
        "precision": head["precision"],
        "recall": head["recall"],
        "f1": head["f1"],
        "macro": macro,
        "per_class": per_class,
        "confusion_matrix": cm,
        "labels": list(labels),
    }


def format_metrics(name: str, m: dict[str, Any]) -> str:
    """One human-readable line: ``test  acc 98.33%  P 0.99  R 0.98  F1 0.98  (n=300)``."""
    return (
        f"{name:<8} acc {100 * m['accuracy']:6.2f}%  precision {m['precision']:.3f}  "
        f"recall {m['recall']:.3f}  F1 {m['f1']:.3f}  (n={m['n']})"
    )


def format_confusion(m: dict[str, Any]) -> str:
    """The confusion matrix as a small table (rows: true label, columns: predicted)."""
    labels = m["labels"]
    w = max(8, *(len(x) for x in labels)) + 1
    lines = [" " * w + "".join(f"{'pred ' + x:>{w + 5}}" for x in labels)]
    for name, row in zip(labels, m["confusion_matrix"]):
        lines.append(f"{name:<{w}}" + "".join(f"{v:>{w + 5}}" for v in row))
    return "\n".join(lines)
