"""``gptlab classify train|eval|predict``: fine-tune a GPT as a text classifier and use it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gptlab.cli.quantize_cmds import add_quantize_flags
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
    t.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out folder (only one that holds a classifier)")
    t.add_argument("--trainable", choices=["head", "last", "all", "lora"], default=None,
                   help="what trains: head only, last N blocks + final norm + head (default), all layers, or LoRA "
                   "(default lora when --lora-rank is given)")
    t.add_argument("--last-blocks", type=int, default=1, help="blocks trained with --trainable last (default 1, the book)")
    t.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (implies --trainable lora; default 16)")
    t.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha; the update is scaled by alpha/rank (default 16)")
    t.add_argument("--lora-targets", default="all",
                   help="layers that get adapters, comma-separated: all, attn, qkv, ff, head (GPT-2 or Llama layout), "
                        "q, k, v, o, gate, up, down (Llama/Qwen), or name patterns like 'blocks.*.att.qkv' (default all)")
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
        description="Accuracy, precision, recall, F1 and the confusion matrix of a classifier folder. By default "
        "on the test part of the data it was trained with: the folder remembers the file, its columns and the "
        "split, and --split picks another part of the same split.",
    )
    e.add_argument("--model", required=True, help="classifier folder written by gptlab classify train")
    _data_args(e, split_seed=False)
    e.add_argument("--split", choices=["train", "val", "test", "left-out", "all"], default=None,
                   help="on the data the classifier was trained with (or sms-spam): which part of the same split "
                   "(default test); any other file is used whole")
    e.add_argument("--base", default=None, help="base model for a LoRA classifier (default: the one it was trained on)")
    add_quantize_flags(e)
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
    p.add_argument("--text-column", default=None,
                   help="text column of a CSV/TSV/JSONL --input (default: the classifier's training column, else text)")
    p.add_argument("--base", default=None, help="base model for a LoRA classifier (default: the one it was trained on)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    add_quantize_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per text (JSON lines)")
    p.set_defaults(func=_predict)

    def no_cmd(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=no_cmd)


def _data_args(p: argparse.ArgumentParser, split_seed: bool = True) -> None:
    if split_seed:
        p.add_argument("--data", default="sms-spam",
                       help="sms-spam (default) or a CSV/TSV/JSONL file with a text and a label column")
        p.add_argument("--text-column", default="text", help="name of the text column/field (default text)")
        p.add_argument("--label-column", default="label", help="name of the label column/field (default label)")
    else:  # eval: everything defaults to what the classifier was trained with (classifier.json)
        p.add_argument("--data", default=None,
                       help="sms-spam or a CSV/TSV/JSONL file (default: the data the classifier was trained on)")
        p.add_argument("--text-column", default=None,
                       help="name of the text column/field (default: the training one, else text)")
        p.add_argument("--label-column", default=None,
                       help="name of the label column/field (default: the training one, else label)")
    if split_seed:
        p.add_argument("--split-seed", type=int, default=123, help="seed of the balancing and the 70/10/20 split (default 123)")
        p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=None,
                       help="undersample every class to the smallest (default: on for sms-spam, off for files)")
        p.add_argument("--val-fraction", type=float, default=0.1, help="share of the data for validation (default 0.1)")
        p.add_argument("--test-fraction", type=float, default=0.2, help="share of the data for testing (default 0.2)")


def _train(args: argparse.Namespace) -> int:
    from gptlab.finetune.classify.config import ClassifyConfig
    from gptlab.finetune.classify.data import DataSpec
    from gptlab.finetune.classify.metrics import format_confusion, format_metrics
    from gptlab.finetune.classify.store import classifier_out_dir
    from gptlab.finetune.classify.train import train_classifier

    trainable = args.trainable or ("lora" if args.lora_rank is not None else "last")
    if args.lora_rank is not None and trainable != "lora":
        raise GptlabError(f"--lora-rank given with --trainable {trainable}; use --trainable lora (or leave it out)")
    # Only a given --lora-rank reaches the config: "rank or default" would turn --lora-rank 0 into the default.
    lora_rank = {} if args.lora_rank is None else {"lora_rank": args.lora_rank}
    cfg = ClassifyConfig(
        model=args.model, trainable=trainable, last_blocks=args.last_blocks, **lora_rank,
        lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, lora_dropout=args.lora_dropout,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_frac=args.warmup, schedule=args.schedule, max_length=args.max_length, append_eot=args.append_eot,
        drop_rate=args.dropout, precision=args.precision, seed=args.seed, threads=args.threads,
        lm_epochs=args.lm_epochs, lm_lr=args.lm_lr, ensemble=args.ensemble,
    )
    cfg.validate()
    spec = DataSpec.from_flags(args.data, args.text_column, args.label_column, args.split_seed, args.balance,
                               args.val_fraction, args.test_fraction)
    path = args.out or Path("runs") / f"classify-{Path(args.data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Checked before the data and the base model load, so a bad --out costs a second, not a model load.
    out_dir = classifier_out_dir(path, overwrite=args.overwrite)
    splits = spec.split()
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    result = train_classifier(cfg, splits, out_dir, spec.record(splits), progress=not args.no_progress, log=log)
    out = out_dir.path
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
    from gptlab.finetune.classify.data import eval_data
    from gptlab.finetune.classify.metrics import format_confusion, format_metrics
    from gptlab.finetune.classify.predict import labeled_texts_metrics
    from gptlab.finetune.classify.store import classifier_meta

    # The data first (from classifier.json alone): a wrong flag should not wait for a model to load.
    recorded = classifier_meta(args.model).get("data")
    data, split, spec = eval_data(recorded, args.data, args.text_column, args.label_column, args.split,
                                  where=str(Path(args.model) / "classifier.json"))
    model, tokenizer, labels, meta = _load_classifier(args)
    m = labeled_texts_metrics(model, tokenizer, labels, meta, data)
    if args.json:
        print(json.dumps({"model": str(args.model), "data": spec, "split": split, **m}, indent=2))
        return 0
    print(format_metrics(split, m))
    print(format_confusion(m))
    return 0


def _load_classifier(args: argparse.Namespace):  # noqa: ANN202
    """The classifier of ``--model`` (with ``--base``), quantized when ``--quantize`` says so."""
    from gptlab.finetune.classify.store import load_classifier
    from gptlab.model.quantize import quantize_model

    model, tokenizer, labels, meta = load_classifier(args.model, args.base)
    if args.quantize:
        quantize_model(model, args.quantize, args.group_size)
    return model, tokenizer, labels, meta


def _predict(args: argparse.Namespace) -> int:
    from gptlab.finetune.classify.data import read_texts
    from gptlab.finetune.classify.predict import classify_texts
    from gptlab.finetune.classify.store import classifier_meta

    if args.batch_size < 1:
        raise GptlabError(f"--batch-size must be at least 1, got {args.batch_size}")
    recorded = classifier_meta(args.model).get("data") or {}
    texts = list(args.texts)
    if args.input:
        texts += read_texts(args.input, args.text_column or recorded.get("text_column", "text"))
    if not texts:
        raise GptlabError("no text to classify: give texts as arguments or --input FILE")
    for i, t in enumerate(texts):
        if not t.strip():
            raise GptlabError(f"text {i + 1} is empty")
    model, tokenizer, labels, meta = _load_classifier(args)
    for r in classify_texts(model, tokenizer, labels, meta, texts, args.batch_size):
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            probs = "  ".join(f"{k} {v:.4f}" for k, v in r["probabilities"].items())
            short = r["text"] if len(r["text"]) <= 60 else r["text"][:57] + "..."
            print(f"{r['label']}\t{probs}\t{short}")
    return 0
