"""The saved classifier folder: writing it as training goes, and loading it back.

A classifier folder holds

* ``classifier.json`` – what the model is: base model, number of classes, trainable scope, LoRA settings,
  max length, padding id, training settings, the best epoch's metrics, ``ensemble``, the number of
  members whose weights are complete, and ``data``, the training data and its split
  (:meth:`~gptlab.finetune.classify.data.DataSpec.record`, which ``classify eval`` rebuilds);
* ``labels.json`` – the label map (class id -> name);
* ``tokenizer.json`` – the tokenizer;
* the first member's weights: ``model.safetensors`` (full weights), or ``adapter/`` plus
  ``head.safetensors`` (LoRA: the adapter and the new head only, applied on top of the base model named
  in ``classifier.json``);
* for an ensemble, member *k* (k >= 2) has the same weight files under ``ensemble/<k>/``;
* ``metrics.jsonl``, ``loss.png``, ``accuracy.png`` and ``results.json`` (written by training).

Every file is written atomically, and ``classifier.json`` only counts a member once its weights are on
disk, so an interrupted run leaves a folder that still loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


from gptlab.errors import GptlabError
from gptlab.finetune.classify.data import LabelMap
from gptlab.finetune.classify.model import EnsembleClassifier, GPTClassifier
from gptlab.io import atomic_write_bytes, atomic_write_text
from gptlab.outdir import OutDir
from gptlab.tokenizer import save_tokenizer

CLASSIFIER_FORMAT = "gptlab-classifier"
ENSEMBLE_DIR = "ensemble"


def member_dir(directory: str | os.PathLike, index: int) -> Path:
    """Where member ``index`` (0-based) of a classifier folder keeps its weights."""
    directory = Path(directory)
    return directory if index == 0 else directory / ENSEMBLE_DIR / str(index + 1)


def save_member_weights(model: GPTClassifier, directory: str | os.PathLike, lora: bool, base: str | None) -> None:
    """Write one classifier's weights into ``directory``: full weights, or a LoRA adapter plus the head."""
    from safetensors.torch import save

    from gptlab.train.checkpoint import model_state_for_saving

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if lora:
        from gptlab.finetune.lora import save_adapter

        save_adapter(model.gpt, directory / "adapter", base={"model": base})
        # The new head is not part of the base model; in the book's LoRA setup it stays frozen at its
        # random initialisation (its adapter learns), so its weights must be kept beside the adapter.
        head = model.gpt.out_head
        tensors = {"weight": head.weight.detach().contiguous().cpu()}
        if head.bias is not None:
            tensors["bias"] = head.bias.detach().contiguous().cpu()
        atomic_write_bytes(directory / "head.safetensors", save(tensors))
    else:
        atomic_write_bytes(directory / "model.safetensors", save(model_state_for_saving(model.gpt)))


def save_classifier(
    model: GPTClassifier, directory: str | os.PathLike, meta: dict[str, Any], labels: LabelMap, tokenizer,
    member: int = 0,
) -> None:
    """Write member ``member``'s weights, then the label map, tokenizer and ``classifier.json`` (``meta``)."""
    directory = Path(directory)
    save_member_weights(model, member_dir(directory, member), meta.get("trainable") == "lora", meta.get("base"))
    atomic_write_text(directory / "labels.json", json.dumps(labels.to_dict(), indent=2) + "\n")
    if not (directory / "tokenizer.json").is_file():
        save_tokenizer(tokenizer, directory)
    atomic_write_text(directory / "classifier.json", json.dumps({"format": CLASSIFIER_FORMAT, **meta}, indent=2) + "\n")


def is_classifier_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a classifier written by :func:`save_classifier`."""
    p = Path(path) / "classifier.json"
    try:
        meta = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (ValueError, OSError):
        return False
    return isinstance(meta, dict) and meta.get("format") == CLASSIFIER_FORMAT


def classifier_out_dir(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> OutDir:
    """The checked output folder of a training run: an existing non-empty folder only with ``overwrite``,
    and then only if it holds a classifier. Raises :class:`GptlabError` now, before any work."""
    return OutDir(path, flag=flag, overwrite=overwrite, kind="classifier folder", is_same_kind=is_classifier_dir)


def classifier_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``classifier.json`` of a classifier folder, without loading any weights (cheap checks first)."""
    directory = Path(directory)
    if not is_classifier_dir(directory):
        raise GptlabError(f"{directory}: not a classifier folder (no classifier.json from gptlab classify train)")
    return json.loads((directory / "classifier.json").read_text(encoding="utf-8"))


def load_classifier(directory: str | os.PathLike, base: str | None = None):
    """``(model, tokenizer, labels, meta)`` from a classifier folder, the model in eval mode.

    The model is a :class:`GPTClassifier`, or an :class:`EnsembleClassifier` when the folder holds several
    members. A LoRA classifier loads its base model (``base`` overrides the one recorded in
    ``classifier.json``) and applies the adapter, which refuses a different base model.
    """
    from gptlab.tokenizer import load_tokenizer

    directory = Path(directory)
    meta = classifier_meta(directory)
    try:
        labels = LabelMap.from_dict(json.loads((directory / "labels.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise GptlabError(f"{directory / 'labels.json'}: cannot read the label map ({exc})") from None
    tokenizer = load_tokenizer(directory / "tokenizer.json")
    n = meta.get("ensemble", 1)
    if not isinstance(n, int) or n < 1:
        raise GptlabError(f"{directory / 'classifier.json'}: 'ensemble' must be a positive integer, got {n!r}")
    members = [_load_member(member_dir(directory, i), meta, len(labels), base) for i in range(n)]
    model = members[0] if n == 1 else EnsembleClassifier(members)
    return model.eval(), tokenizer, labels, meta


def _load_member(directory: Path, meta: dict[str, Any], n_classes: int, base: str | None) -> GPTClassifier:
    from safetensors.torch import load_file

    from gptlab.model import GPT, GPTConfig

    if meta.get("trainable") == "lora":
        from gptlab.finetune.lora import load_adapter
        from gptlab.model.load import load_model

        gpt, _ = load_model(base or meta["base"])
        model = GPTClassifier(gpt, n_classes)
        path = directory / "head.safetensors"
        try:
            head = load_file(str(path))
        except (OSError, RuntimeError, ValueError) as exc:
            raise GptlabError(f"{path}: cannot read the classification head ({exc})") from None
        if head["weight"].shape != gpt.out_head.weight.shape:
            raise GptlabError(f"{path}: head has shape {tuple(head['weight'].shape)}, expected {tuple(gpt.out_head.weight.shape)}")
        gpt.out_head.load_state_dict(head)
        load_adapter(gpt, directory / "adapter")
        return model
    gpt = GPT(GPTConfig.from_dict(meta["model_config"]))
    model = GPTClassifier(gpt, n_classes)
    # The classifier's weights are the GPT's (head included) under the same names: the checkpoint
    # loader's shape and completeness checks apply as they are.
    from gptlab.model.run_folder import load_model_weights

    load_model_weights(gpt, directory)
    return model


__all__ = [
    "CLASSIFIER_FORMAT",
    "classifier_meta",
    "classifier_out_dir",
    "is_classifier_dir",
    "load_classifier",
    "member_dir",
    "save_classifier",
]
