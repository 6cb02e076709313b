"""Fine-tuning a GPT for classification: one run, from the base model to the classifier folder.

Training keeps, for each classifier, the epoch with the highest validation accuracy (lower validation
loss breaking ties). With ``ensemble`` > 1 several classifiers are fine-tuned from the same base model
with different seeds and their probabilities averaged. The folder it writes is described in
:mod:`gptlab.finetune.classify.store`; the pieces of a run live beside this module: settings in
``config``, the language-model adaptation in ``adapt``, one member's training in ``fit``, evaluation
and prediction in ``predict``, the plots in ``plots``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gptlab.finetune.classify.adapt import adapt_language_model
from gptlab.finetune.classify.config import ClassifyConfig
from gptlab.finetune.classify.data import LabelMap, Splits, check_splits
from gptlab.finetune.classify.encode import encode_texts, pad_id_for
from gptlab.finetune.classify.fit import EncodedSplits, fit_member, make_classifier
from gptlab.finetune.classify.model import EnsembleClassifier, GPTClassifier
from gptlab.finetune.classify.plots import plot_history
from gptlab.finetune.classify.precision import use_bf16
from gptlab.finetune.classify.predict import evaluate
from gptlab.finetune.classify.store import classifier_out_dir, save_classifier
from gptlab.io import atomic_write_text
from gptlab.model.dropout import set_dropout
from gptlab.outdir import OutDir
from gptlab.train.metrics import MetricsLog

__all__ = ["build_base", "train_classifier"]


def build_base(cfg: ClassifyConfig, adapt_texts: Sequence[str] | None = None, progress: bool = False):
    """``(gpt, tokenizer, lm_losses)``: the base model of ``cfg.model``, adapted to ``adapt_texts`` first
    as a language model when ``cfg.lm_epochs`` is set."""
    from gptlab.model.load import load_model

    torch.manual_seed(cfg.seed)
    gpt, tokenizer = load_model(cfg.model, seed=cfg.seed)
    if cfg.drop_rate is not None:
        set_dropout(gpt, cfg.drop_rate)
    lm_losses: list[float] = []
    if cfg.lm_epochs and adapt_texts:
        max_length = min(cfg.max_length or gpt.cfg.context_length, gpt.cfg.context_length)
        lm_losses = adapt_language_model(
            gpt, tokenizer, adapt_texts, cfg.lm_epochs, cfg.lm_lr, cfg.batch_size, max_length,
            use_bf16(cfg.precision), cfg.seed, progress,
        )
    return gpt, tokenizer, lm_losses


def _base_name(model: str) -> str:
    base = Path(model).expanduser()
    return str(base.resolve()) if base.exists() else model


def train_classifier(
    cfg: ClassifyConfig,
    splits: Splits,
    out_dir: str | os.PathLike | OutDir | None,
    split_info: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``splits.train``, keep the best epoch by validation accuracy, and report.

    With ``cfg.ensemble`` = k > 1, k classifiers are fine-tuned from the same (adapted) base model with
    seeds ``cfg.seed``, ``cfg.seed + 1``, ... and their probabilities averaged.

    Returns a dict with ``best_epoch`` (of the first member), ``members`` (each member's seed, best epoch
    and validation/test accuracy), per-split metrics of the best checkpoint or ensemble (``train``,
    ``val``, ``test`` and, for a balanced split, ``left_out``), ``history`` (one record per member and
    epoch), ``trainable_parameters``, ``seconds`` and ``model``. With ``out_dir`` None nothing is written
    (benchmarks).

    ``out_dir`` must be a new or empty folder; a non-empty one is replaced only with ``overwrite`` and
    only if it holds a classifier (checked before any work; a caller that checks earlier passes the
    :class:`OutDir` from :func:`~gptlab.finetune.classify.store.classifier_out_dir`, whose own setting
    then counts). ``split_info`` is recorded as ``data`` in ``classifier.json``
    (:meth:`~gptlab.finetune.classify.data.DataSpec.record`), which lets ``classify eval`` rebuild the split.
    """
    cfg.validate()
    out = out_dir if out_dir is None or isinstance(out_dir, OutDir) else classifier_out_dir(out_dir, overwrite)
    check_splits(splits)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    labels = LabelMap.from_labels(splits.train)
    y_train, y_val, y_test = labels.encode(splits.train), labels.encode(splits.val), labels.encode(splits.test)
    t0 = time.perf_counter()
    base_gpt, tokenizer, lm_losses = build_base(cfg, splits.train.texts, progress)
    max_length = min(cfg.max_length or base_gpt.cfg.context_length, base_gpt.cfg.context_length)
    pad_id = pad_id_for(tokenizer)
    enc = lambda d: encode_texts(tokenizer, d.texts, max_length, cfg.append_eot)  # noqa: E731
    x_train, x_val, x_test = enc(splits.train), enc(splits.val), enc(splits.test)
    data = EncodedSplits(x_train, y_train, x_val, y_val, pad_id, labels)
    bf16 = use_bf16(cfg.precision)
    meta: dict[str, Any] = {
        "base": _base_name(cfg.model),
        "model_config": base_gpt.cfg.to_dict(),
        "n_classes": len(labels),
        "trainable": cfg.trainable,
        "max_length": max_length,
        "pad_id": pad_id,
        "append_eot": cfg.append_eot,
        "train_config": asdict(cfg),
        "data": split_info or {},
    }
    history: list[dict[str, Any]] = []
    members: list[GPTClassifier] = []
    member_info: list[dict[str, Any]] = []
    n_trainable = 0

    # The folder is written in place, not staged: an interrupted ensemble keeps the members it finished.
    # It is committed when the first best epoch is saved, the first moment it holds a classifier that
    # loads: a run failing before that leaves nothing behind (a folder it replaced comes back), one
    # failing later keeps its best epoch so far.
    claim = out.claim() if out is not None else contextlib.nullcontext(None)
    with claim as folder:
        def on_epoch(record: dict[str, Any]) -> None:
            history.append(record)
            if folder is not None:
                MetricsLog(folder / "metrics.jsonl").append(record)
                plot_history(history, folder, cfg.ensemble)

        for k in range(cfg.ensemble):
            seed = cfg.seed + k
            # Every member starts from the same adapted base; the last one may take it over.
            gpt = base_gpt if k == cfg.ensemble - 1 else copy.deepcopy(base_gpt)
            model, n_trainable = make_classifier(gpt, cfg, len(labels), seed)
            meta["trainable_parameters"] = n_trainable
            member = f" (ensemble member {k + 1} of {cfg.ensemble}, seed {seed})" if cfg.ensemble > 1 else ""
            log(
                f"fine-tuning {cfg.model} ({cfg.trainable}, {n_trainable:,} trainable parameters) on {len(x_train)} "
                f"examples, {len(labels)} classes, {cfg.epochs} epochs{member}"
            )

            def save(model: GPTClassifier, record: dict[str, Any], k: int = k) -> None:
                bests = [m["best"] for m in member_info] + [record]
                save_classifier(model, folder, {**meta, "best": bests[0], "ensemble": k + 1, "members": bests},
                                labels, tokenizer, member=k)
                assert out is not None
                out.commit()  # the folder now holds a classifier that loads: from here on, failures keep it

            best = fit_member(model, cfg, seed, data, bf16, k, t0, save if folder is not None else None, on_epoch,
                              progress, log)
            members.append(model.eval())
            test_acc = evaluate(model, x_test, y_test, labels.names, pad_id, bf16=bf16)["accuracy"]
            member_info.append({"seed": seed, "best_epoch": best["epoch"], "best": best,
                                "val_accuracy": best["val_accuracy"], "test_accuracy": test_acc})
        final: GPTClassifier | EnsembleClassifier = members[0] if len(members) == 1 else EnsembleClassifier(members)
        result: dict[str, Any] = {
            "best_epoch": member_info[0]["best_epoch"],
            "members": [{k: v for k, v in m.items() if k != "best"} for m in member_info],
            "trainable_parameters": n_trainable,
            "train_seconds": round(time.perf_counter() - t0, 2),
            "lm_losses": lm_losses,
            "history": history,
            "labels": labels.names,
        }
        result["train"] = evaluate(final, x_train, y_train, labels.names, pad_id, bf16=bf16)
        result["val"] = evaluate(final, x_val, y_val, labels.names, pad_id, bf16=bf16)
        result["test"] = evaluate(final, x_test, y_test, labels.names, pad_id, bf16=bf16)
        if splits.left_out is not None and len(splits.left_out):
            y_left = labels.encode(splits.left_out)
            result["left_out"] = evaluate(final, enc(splits.left_out), y_left, labels.names, pad_id, bf16=bf16)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        if folder is not None:
            atomic_write_text(folder / "results.json", json.dumps(result, indent=2) + "\n")
    result["model"] = final
    return result
