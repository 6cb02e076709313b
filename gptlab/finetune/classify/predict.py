"""Running a classifier: class logits, metrics on labelled texts, and predictions for new texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from gptlab.finetune.classify.data import LabeledTexts, LabelMap
from gptlab.finetune.classify.encode import encode_texts
from gptlab.finetune.classify.metrics import classification_metrics
from gptlab.finetune.classify.model import GPTClassifier, pad_batch
from gptlab.finetune.classify.precision import autocast, use_bf16

__all__ = ["classify_texts", "evaluate", "labeled_texts_metrics", "predict_logits"]


@torch.no_grad()
def predict_logits(
    model: GPTClassifier, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 32, bf16: bool = False
) -> torch.Tensor:
    """Class logits ``[N, n_classes]`` (float32) for token lists; batches group similar lengths for speed."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), model.n_classes)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = pad_batch([list(seqs[i]) for i in chunk], pad_id)
        with autocast(bf16):
            logits = model(ids, mask)
        out[chunk] = logits.float()
    model.train(was_training)
    return out


def evaluate(
    model: GPTClassifier, seqs: Sequence[Sequence[int]], y: Sequence[int], labels: Sequence[str], pad_id: int,
    batch_size: int = 32, bf16: bool = False,
) -> dict[str, Any]:
    """Metrics (see :func:`classification_metrics`) plus mean cross-entropy ``loss``."""
    logits = predict_logits(model, seqs, pad_id, batch_size, bf16)
    target = torch.tensor(list(y), dtype=torch.long)
    m = classification_metrics(target.tolist(), logits.argmax(-1).tolist(), labels)
    m["loss"] = float(F.cross_entropy(logits, target))
    return m


def classify_texts(
    model: GPTClassifier, tokenizer, labels: LabelMap, meta: dict[str, Any], texts: Sequence[str], batch_size: int = 32
) -> list[dict[str, Any]]:
    """For each text: ``{"text", "label", "probabilities": {label: p}}``."""
    seqs = encode_texts(tokenizer, texts, int(meta["max_length"]), bool(meta.get("append_eot")))
    logits = predict_logits(model, seqs, int(meta["pad_id"]), batch_size, use_bf16(meta.get("train_config", {}).get("precision", "auto")))
    probs = torch.softmax(logits, dim=-1)
    return [
        {
            "text": t,
            "label": labels.names[int(p.argmax())],
            "probabilities": {n: round(float(v), 6) for n, v in zip(labels.names, p)},
        }
        for t, p in zip(texts, probs)
    ]


def labeled_texts_metrics(
    model: GPTClassifier, tokenizer, labels: LabelMap, meta: dict[str, Any], data: LabeledTexts
) -> dict[str, Any]:
    """Metrics of a saved classifier on labelled ``data`` (unknown labels are an error)."""
    y = labels.encode(data)
    seqs = encode_texts(tokenizer, data.texts, int(meta["max_length"]), bool(meta.get("append_eot")))
    bf16 = use_bf16(meta.get("train_config", {}).get("precision", "auto"))
    return evaluate(model, seqs, y, labels.names, int(meta["pad_id"]), bf16=bf16)
