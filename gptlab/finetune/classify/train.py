"""Fine-tuning a GPT for classification: the training loop, evaluation and prediction.

Training keeps, for each classifier, the epoch with the highest validation accuracy (lower validation
loss breaking ties). With ``ensemble`` > 1 several classifiers are fine-tuned from the same base model
with different seeds and their probabilities averaged. The folder it writes is described in
:mod:`gptlab.finetune.classify.store`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError
from gptlab.finetune.classify.data import LabeledTexts, LabelMap, Splits, check_splits
from gptlab.finetune.classify.metrics import classification_metrics
from gptlab.finetune.classify.model import EnsembleClassifier, GPTClassifier, pad_batch, set_trainable
from gptlab.finetune.classify.store import classifier_out_dir, load_classifier, save_classifier
from gptlab.io import atomic_write_text
from gptlab.outdir import OutDir

__all__ = ["ClassifyConfig", "classify_texts", "labeled_texts_metrics", "load_classifier", "train_classifier"]


@dataclass
class ClassifyConfig:
    """Settings of one fine-tuning run (defaults: the book's chapter 6, except where noted)."""

    model: str = "gpt2"
    trainable: str = "last"  # head | last | all | lora
    last_blocks: int = 1
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: str = "all"
    lora_dropout: float = 0.0
    epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    warmup_frac: float = 0.0
    schedule: str = "constant"  # constant | cosine (decays to 10% after the warmup)
    grad_clip: float = 1.0
    max_length: int | None = None  # tokens per text (default: the model's context length)
    append_eot: bool = False  # end every text with <|endoftext|>, a fixed position for the prediction
    drop_rate: float | None = None  # override the model's dropout
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 123  # head initialisation, batch order, dropout
    eval_train_examples: int = 0  # evaluate on this many training examples per epoch (0 = all)
    threads: int | None = None
    # ULMFiT-style domain adaptation: first train the base model as a language model on the training
    # texts (no labels) for this many epochs, then fine-tune it as a classifier.
    lm_epochs: int = 0
    lm_lr: float = 1e-3
    # Fine-tune this many classifiers (seeds seed, seed + 1, ...) from the same base model and average
    # their probabilities: steadier predictions on the hard examples, at k times the fine-tuning cost.
    ensemble: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise GptlabError, naming the flag, on a setting that cannot work."""
        if self.trainable not in ("head", "last", "all", "lora"):
            raise GptlabError(f"--trainable {self.trainable!r}: expected head, last, all or lora")
        for name in ("epochs", "batch_size", "lora_rank", "last_blocks", "ensemble"):
            if getattr(self, name) < 1:
                raise GptlabError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise GptlabError(f"--threads must be at least 1, got {self.threads}")
        # Written as "not (ok)" so that nan, which every comparison rejects, fails too.
        for name in ("lr", "lm_lr", "lora_alpha"):
            if not 0 < getattr(self, name) < math.inf:
                raise GptlabError(f"{_flag(name)} must be a positive number, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if not 0 <= getattr(self, name) < math.inf:
                raise GptlabError(f"{_flag(name)} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.warmup_frac <= 1:
            raise GptlabError(f"--warmup must be a share of the steps between 0 and 1, got {self.warmup_frac}")
        for name in ("lora_dropout", "drop_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise GptlabError(f"{_flag(name)} must be at least 0 and below 1, got {value}")
        if self.eval_train_examples < 0:
            raise GptlabError(f"eval_train_examples must be 0 (all) or more, got {self.eval_train_examples}")
        if self.schedule not in ("constant", "cosine"):
            raise GptlabError(f"--schedule {self.schedule!r}: expected constant or cosine")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise GptlabError(f"--precision {self.precision!r}: expected auto, bf16 or fp32")
        if self.lm_epochs < 0:
            raise GptlabError(f"--lm-epochs must be 0 or more, got {self.lm_epochs}")
        if self.lm_epochs and self.trainable == "lora":
            raise GptlabError("--lm-epochs changes the base model, so it cannot be combined with LoRA adapters")
        if self.max_length is not None and self.max_length < 2:
            raise GptlabError(f"--max-length must be at least 2, got {self.max_length}")


# Fields whose ``classify train`` flag is not the field's name with dashes (grad_clip has no flag).
_FLAG_NAMES = {"warmup_frac": "--warmup", "drop_rate": "--dropout", "grad_clip": "grad_clip"}


def _flag(field_name: str) -> str:
    return _FLAG_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


# --------------------------------------------------------------------------- building blocks


def use_bf16(precision: str) -> bool:
    """bf16 autocast: asked for, or ``auto`` on a CPU with fast bf16 matrix products."""
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    from gptlab.train.trainer import fast_bf16

    return fast_bf16(torch.device("cpu"))


def autocast(bf16: bool):
    """A CPU bf16 autocast context, or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, append_eot: bool = False) -> list[list[int]]:
    """Token ids of each text, cut to ``max_length`` (keeping the start, as the book does).

    With ``append_eot`` every text ends with ``<|endoftext|>`` (kept even when the text is cut).
    """
    eot = tokenizer.eot_id if append_eot else None
    if append_eot and eot is None:
        raise GptlabError("--append-eot: the tokenizer has no <|endoftext|> token")
    out = []
    for i, text in enumerate(texts):
        if not text.strip():
            raise GptlabError(f"text {i + 1} is empty")
        ids = tokenizer.encode_ordinary(text)
        if eot is not None:
            ids = ids[: max_length - 1] + [eot]
        else:
            ids = ids[:max_length]
        if not ids:
            raise GptlabError(f"text {i + 1} has no tokens")
        out.append(ids)
    return out


def pad_id_for(tokenizer) -> int:
    """``<|endoftext|>`` pads, as in the book; 0 when the tokenizer has no such token (padding is masked)."""
    return tokenizer.eot_id if tokenizer.eot_id is not None else 0


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


def adapt_language_model(
    gpt, tokenizer, texts: Sequence[str], epochs: int, lr: float, batch_size: int, max_length: int,
    bf16: bool, seed: int, progress: bool = False,
) -> list[float]:
    """Train ``gpt`` as a language model on ``texts`` (each ended by <|endoftext|> when there is one).

    The first step of ULMFiT: the model learns the words and style of the new domain before it learns
    the labels. Returns the mean loss of each epoch.
    """
    from tqdm.auto import tqdm

    seqs = [s for s in encode_texts(tokenizer, texts, max_length, tokenizer.eot_id is not None) if len(s) > 1]
    params = [p for p in gpt.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed + 1)
    pad = pad_id_for(tokenizer)
    losses = []
    gpt.train()
    bar = tqdm(total=epochs * math.ceil(len(seqs) / batch_size), desc="adapting the LM", unit="step",
               disable=not progress, dynamic_ncols=True)
    for _ in range(epochs):
        order = list(range(len(seqs)))
        rng.shuffle(order)
        total, count = 0.0, 0
        for b in range(0, len(order), batch_size):
            chunk = [seqs[i] for i in order[b : b + batch_size]]
            ids, mask = pad_batch(chunk, pad)
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            with autocast(bf16):
                _, loss = gpt(ids[:, :-1], targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            total += loss.item()
            count += 1
            bar.update(1)
        losses.append(total / max(count, 1))
        bar.set_postfix(lm_loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def build_base(cfg: ClassifyConfig, adapt_texts: Sequence[str] | None = None, progress: bool = False):
    """``(gpt, tokenizer, lm_losses)``: the base model of ``cfg.model``, adapted to ``adapt_texts`` first
    as a language model when ``cfg.lm_epochs`` is set."""
    from gptlab.model.load import load_model, tokenizer_for

    torch.manual_seed(cfg.seed)
    gpt = load_model(cfg.model, seed=cfg.seed)
    tokenizer = tokenizer_for(cfg.model, gpt)
    if cfg.drop_rate is not None:
        _set_dropout(gpt, cfg.drop_rate)
    lm_losses: list[float] = []
    if cfg.lm_epochs and adapt_texts:
        max_length = min(cfg.max_length or gpt.cfg.context_length, gpt.cfg.context_length)
        lm_losses = adapt_language_model(
            gpt, tokenizer, adapt_texts, cfg.lm_epochs, cfg.lm_lr, cfg.batch_size, max_length,
            use_bf16(cfg.precision), cfg.seed, progress,
        )
    return gpt, tokenizer, lm_losses


def make_classifier(gpt, cfg: ClassifyConfig, n_classes: int, seed: int) -> tuple[GPTClassifier, int]:
    """``(classifier, trainable parameter count)``: ``gpt`` with a new head (seeded) and the scope applied."""
    model = GPTClassifier(gpt, n_classes, seed=seed)
    if cfg.trainable == "lora":
        from gptlab.finetune.lora import apply_lora

        n = apply_lora(gpt, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets.split(","), cfg.lora_dropout)
    else:
        n = set_trainable(model, cfg.trainable, cfg.last_blocks)
    return model, n


def _base_name(model: str) -> str:
    base = Path(model).expanduser()
    return str(base.resolve()) if base.exists() else model


def _set_dropout(gpt, p: float) -> None:
    gpt.cfg = gpt.cfg.replace(drop_rate=p)
    for m in gpt.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = p



# --------------------------------------------------------------------------- training


def _lr_at(step: int, total: int, cfg: ClassifyConfig) -> float:
    warm = int(cfg.warmup_frac * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    return cfg.lr


@dataclass
class _Encoded:
    """Token ids and class ids of the splits, ready for batching."""

    x_train: list[list[int]]
    y_train: list[int]
    x_val: list[list[int]]
    y_val: list[int]
    pad_id: int
    labels: LabelMap


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
    import copy

    from gptlab.train.metrics import MetricsLog

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
    data = _Encoded(x_train, y_train, x_val, y_val, pad_id, labels)
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
                _plots(history, folder, cfg.ensemble)

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

            best = _fit(model, cfg, seed, data, bf16, k, t0, save if folder is not None else None, on_epoch,
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


def _fit(
    model: GPTClassifier, cfg: ClassifyConfig, seed: int, data: _Encoded, bf16: bool, member: int, t0: float,
    save: Callable[[GPTClassifier, dict[str, Any]], None] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None, progress: bool, log: Callable[[str], None],
) -> dict[str, Any]:
    """Train one classifier for ``cfg.epochs``, evaluating each epoch; leaves the best epoch's weights in
    ``model`` and returns that epoch's record. ``save(model, record)`` runs on each new best,
    ``on_epoch(record)`` after every epoch."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)  # dropout
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
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
                g["lr"] = _lr_at(step, total, cfg)
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


def _plots(history: list[dict[str, Any]], out: Path, members: int) -> None:
    """The loss and accuracy PNGs of every member so far."""
    from gptlab.train.metrics import plot_curves

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
