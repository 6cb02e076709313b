"""``gptlab classify train|eval|predict``: fine-tune a GPT as a text classifier and use it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gptlab.errors import GptlabError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``classify`` verb with its ``train``, ``eval`` and ``predict`` sub-verbs."""
    parser = subparsers.add_parser(
        "classify",
        help="fine-tune a GPT for text classification (e.g. SMS spam) and use it",
        description="Replace a GPT's language-model head with a classification head, fine-tune it "
        "(head, last blocks, all layers or LoRA), evaluate it and classify new texts.",
    )
    sub = parser.add_subparsers(dest="classify_cmd", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="fine-tune a classifier",
        description="Fine-tune on sms-spam (the book's balanced 70/10/20 split) or a CSV/TSV/JSONL file "
        "with a text and a label column; evaluates every epoch and keeps the best one in --out.",
    )
    _data_args(t)
    t.add_argument("--model", required=True,
                   help="base model: a gptlab pretrain run folder, a Hugging Face GPT-2 folder, a hub name, or a preset (random weights)")
    t.add_argument("--out", default=None, help="classifier folder to write (default runs/classify-<data>-<time>)")
    t.add_argument("--trainable", choices=["head", "last", "all", "lora"], default=None,
                   help="what trains: head only, last N blocks + final norm + head (default), all layers, or LoRA "
                   "(default lora when --lora-rank is given)")
    t.add_argument("--last-blocks", type=int, default=1, help="blocks trained with --trainable last (default 1, the book)")
    t.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (implies --trainable lora; default 16)")
    t.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha; the update is scaled by alpha/rank (default 16)")
    t.add_argument("--lora-targets", default="all",
                   help="layers that get adapters: all, attn, qkv, ff, head or name patterns like 'blocks.*.att.qkv', comma-separated (default all)")
    t.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input (default 0)")
    t.add_argument("--lm-epochs", type=int, default=0,
                   help="first adapt the base model as a language model on the training texts for N epochs (ULMFiT; default 0)")
    t.add_argument("--lm-lr", type=float, default=1e-3, help="learning rate of --lm-epochs (default 1e-3)")
    t.add_argument("--epochs", type=int, default=5, help="passes over the training set (default 5)")
    t.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    t.add_argument("--lr", type=float, default=5e-5, help="peak learning rate of AdamW (default 5e-5, the book)")
    t.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default 0.1)")
    t.add_argument("--warmup", type=float, default=0.0, help="share of the steps for a linear warmup (default 0)")
    t.add_argument("--schedule", choices=["constant", "cosine"], default="constant", help="learning-rate schedule after the warmup")
    t.add_argument("--max-length", type=int, default=None, help="tokens kept per text (default: the model's context length)")
    t.add_argument("--append-eot", action="store_true", help="end every text with <|endoftext|> (a fixed token to read the prediction from)")
    t.add_argument("--dropout", type=float, default=None, help="override the model's dropout rate")
    t.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast where bf16 matrix products are fast (default)")
    t.add_argument("--seed", type=int, default=123, help="seed for the head, batch order and dropout (default 123)")
    t.add_argument("--ensemble", type=int, default=1,
                   help="fine-tune N classifiers (seeds SEED, SEED+1, ...) from the same base model and average "
                   "their probabilities (default 1)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "eval",
        help="metrics of a classifier on labelled data",
        description="Accuracy, precision, recall, F1 and the confusion matrix of a classifier folder. With "
        "sms-spam, --split picks the part of the split the model was trained with (same seed).",
    )
    e.add_argument("--model", required=True, help="classifier folder written by gptlab classify train")
    _data_args(e, split_seed=False)
    e.add_argument("--split", choices=["train", "val", "test", "left-out", "all"], default="test",
                   help="with sms-spam: which part of the model's split (default test); a file is used whole")
    e.add_argument("--base", default=None, help="base model for a LoRA classifier (default: the one it was trained on)")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=_eval)

    p = sub.add_parser(
        "predict",
        help="classify texts",
        description="Print each text's predicted label and the probability of every class.",
    )
    p.add_argument("--model", required=True, help="classifier folder written by gptlab classify train")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--input", default=None,
                   help="file of texts: one per line, or a CSV/TSV/JSONL file (its --text-column)")
    p.add_argument("--text-column", default="text", help="text column of a CSV/TSV/JSONL --input (default text)")
    p.add_argument("--base", default=None, help="base model for a LoRA classifier (default: the one it was trained on)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help="one JSON object per text (JSON lines)")
    p.set_defaults(func=_predict)

    def no_cmd(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=no_cmd)


def _data_args(p: argparse.ArgumentParser, split_seed: bool = True) -> None:
    p.add_argument("--data", default="sms-spam" if split_seed else None,
                   help="sms-spam (default for train) or a CSV/TSV/JSONL file with a text and a label column")
    p.add_argument("--text-column", default="text", help="name of the text column/field (default text)")
    p.add_argument("--label-column", default="label", help="name of the label column/field (default label)")
    if split_seed:
        p.add_argument("--split-seed", type=int, default=123, help="seed of the balancing and the 70/10/20 split (default 123)")
        p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=None,
                       help="undersample every class to the smallest (default: on for sms-spam, off for files)")
        p.add_argument("--val-fraction", type=float, default=0.1, help="share of the data for validation (default 0.1)")
        p.add_argument("--test-fraction", type=float, default=0.2, help="share of the data for testing (default 0.2)")


def _split(args: argparse.Namespace):
    from gptlab.finetune.classify.data import SMS_SPAM, balanced_split, load_labeled

    data = load_labeled(args.data, args.text_column, args.label_column)
    balance = args.balance if args.balance is not None else args.data == SMS_SPAM
    for name in ("val_fraction", "test_fraction"):
        v = getattr(args, name)
        if not 0 < v < 1:
            raise GptlabError(f"--{name.replace('_', '-')} must be between 0 and 1, got {v}")
    train_frac = 1 - args.val_fraction - args.test_fraction
    if train_frac <= 0:
        raise GptlabError("--val-fraction + --test-fraction leave nothing to train on")
    splits = balanced_split(data, args.split_seed, (train_frac, args.val_fraction), balance)
    info = {
        "data": args.data if args.data == SMS_SPAM else str(Path(args.data).resolve()),
        "text_column": args.text_column,
        "label_column": args.label_column,
        "split_seed": args.split_seed,
        "balance": balance,
        "fractions": [train_frac, args.val_fraction],
        "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                  "left_out": len(splits.left_out) if splits.left_out is not None else 0},
    }
    return splits, info


def _train(args: argparse.Namespace) -> int:
    from gptlab.finetune.classify.metrics import format_confusion, format_metrics
    from gptlab.finetune.classify.train import ClassifyConfig, train_classifier

    trainable = args.trainable or ("lora" if args.lora_rank is not None else "last")
    if args.lora_rank is not None and trainable != "lora":
        raise GptlabError(f"--lora-rank given with --trainable {trainable}; use --trainable lora (or leave it out)")
    cfg = ClassifyConfig(
        model=args.model, trainable=trainable, last_blocks=args.last_blocks, lora_rank=args.lora_rank or 16,
        lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, lora_dropout=args.lora_dropout,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_frac=args.warmup, schedule=args.schedule, max_length=args.max_length, append_eot=args.append_eot,
        drop_rate=args.dropout, precision=args.precision, seed=args.seed, threads=args.threads,
        lm_epochs=args.lm_epochs, lm_lr=args.lm_lr, ensemble=args.ensemble,
    )
    cfg.validate()
    splits, info = _split(args)
    out = Path(args.out) if args.out else Path("runs") / f"classify-{Path(args.data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    result = train_classifier(cfg, splits, out, info, progress=not args.no_progress, log=log)
    result.pop("model")
    if args.json:
        print(json.dumps({"out": str(out), **result}, indent=2))
        return 0
    if cfg.ensemble > 1:
        for i, m in enumerate(result["members"], 1):
            print(f"member {i} (seed {m['seed']}): best epoch {m['best_epoch']}, val {100 * m['val_accuracy']:.2f}%, "
                  f"test {100 * m['test_accuracy']:.2f}%")
        print(f"ensemble of {cfg.ensemble}, {result['train_seconds']:.0f}s of training; "
              f"{result['trainable_parameters']:,} trainable parameters each")
    else:
        print(f"best epoch {result['best_epoch']} of {cfg.epochs}, {result['train_seconds']:.0f}s of training; "
              f"{result['trainable_parameters']:,} trainable parameters")
    for name in ("train", "val", "test"):
        print(format_metrics(name, result[name]))
    if "left_out" in result:
        m = result["left_out"]
        print(f"left-out ({m['n']} examples not in the balanced split): accuracy {100 * m['accuracy']:.2f}%")
    print(format_confusion(result["test"]))
    print(f"classifier saved in {out}; try: gptlab classify predict --model {out} \"some text\"")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from gptlab.finetune.classify.data import SMS_SPAM, LabeledTexts, balanced_split, load_labeled
    from gptlab.finetune.classify.metrics import format_confusion, format_metrics
    from gptlab.finetune.classify.train import labeled_texts_metrics, load_classifier

    model, tokenizer, labels, meta = load_classifier(args.model, args.base)
    data_info = meta.get("data") or {}
    spec = args.data or data_info.get("data")
    if not spec:
        raise GptlabError("--data: give the labelled data to evaluate on")
    if spec == SMS_SPAM:
        full = load_labeled(SMS_SPAM)
        if args.split == "all":
            data = full
        else:
            seed = int(data_info.get("split_seed", 123)) if data_info.get("data") == SMS_SPAM else 123
            fractions = tuple(data_info.get("fractions", (0.7, 0.1)))
            data = balanced_split(full, seed, fractions, bool(data_info.get("balance", True))).get(args.split)
    else:
        data = load_labeled(spec, args.text_column, args.label_column)
    assert isinstance(data, LabeledTexts)
    m = labeled_texts_metrics(model, tokenizer, labels, meta, data)
    if args.json:
        print(json.dumps({"model": str(args.model), "data": spec, "split": args.split if spec == SMS_SPAM else None, **m}, indent=2))
        return 0
    print(format_metrics(args.split if spec == SMS_SPAM else "data", m))
    print(format_confusion(m))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from gptlab.finetune.classify.data import read_texts
    from gptlab.finetune.classify.train import classify_texts, load_classifier

    texts = list(args.texts)
    if args.input:
        texts += read_texts(args.input, args.text_column)
    if not texts:
        raise GptlabError("no text to classify: give texts as arguments or --input FILE")
    for i, t in enumerate(texts):
        if not t.strip():
            raise GptlabError(f"text {i + 1} is empty")
    model, tokenizer, labels, meta = load_classifier(args.model, args.base)
    for r in classify_texts(model, tokenizer, labels, meta, texts, args.batch_size):
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            probs = "  ".join(f"{k} {v:.4f}" for k, v in r["probabilities"].items())
            short = r["text"] if len(r["text"]) <= 60 else r["text"][:57] + "..."
            print(f"{r['label']}\t{probs}\t{short}")
    return 0
