"""``gptlab pretrain`` (the main job) and ``gptlab export`` (a run's model as a Hugging Face folder or a GGUF file)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from gptlab.errors import GptlabError

# Command-line flag -> TrainConfig field (type taken from the field's default).
_FLAGS: list[tuple[str, str, str]] = [
    ("--data", "data", "data set name, text file, folder, or a folder from 'gptlab prepare' (default python-stdlib)"),
    ("--tokenizer", "tokenizer", "gpt2 | char | bpe:N (train an N-token BPE on the data) | tokenizer file (default bpe:4096)"),
    ("--max-chars", "max_chars", "read at most this many bytes of raw text (0 = all; default 8,000,000)"),
    ("--val-fraction", "val_fraction", "share of the tokens held out for validation (default 0.1)"),
    ("--preset", "preset", "model preset (see gptlab info --list-presets; default gpt-micro): GPT-2's design "
     "gpt-nano | gpt-micro | gpt-mini | gpt2..., or Llama's (RoPE, RMSNorm, SwiGLU, grouped-query attention) "
     "llama-nano | llama-micro | llama-mini"),
    ("--init", "init", "weight init: gpt2 (N(0,0.02), default) or torch (PyTorch defaults, as the book's chapter 5)"),
    ("--batch-size", "batch_size", "sequences per micro-batch (default 16)"),
    ("--block-size", "block_size", "tokens per sequence (default: the model's context length)"),
    ("--global-batch-tokens", "global_batch_tokens", "tokens per optimizer step; micro-batches are accumulated to reach it"),
    ("--sampling", "sampling", "random windows, or epoch: the book's shuffled windows at --stride (default random)"),
    ("--stride", "stride", "window stride for --sampling epoch (default: block size)"),
    ("--lr", "lr", "peak learning rate (default 3e-3, for the small presets; ~6e-4 suits gpt2-size models)"),
    ("--min-lr", "min_lr", "learning rate at the end of the cosine decay (default 3e-4)"),
    ("--warmup-steps", "warmup_steps", "linear warmup steps (default: 100, or a tenth of a run shorter than 1,000 steps)"),
    ("--weight-decay", "weight_decay", "weight decay on matrices, decoupled, for both optimizers (default 0.1)"),
    ("--optimizer", "optimizer", "muon (default): Muon (orthogonalized momentum) on the blocks' weight "
     "matrices and AdamW on the rest, one learning rate for both | adamw: AdamW for every parameter"),
    ("--beta1", "beta1", "AdamW beta1 (default 0.9)"),
    ("--beta2", "beta2", "AdamW beta2 (default 0.99)"),
    ("--grad-clip", "grad_clip", "clip the gradient norm to this (0 = off; default 1.0)"),
    ("--max-steps", "max_steps", "stop after this many optimizer steps (counted over the whole run when resuming)"),
    ("--epochs", "epochs", "stop after this many passes over the training tokens"),
    ("--max-tokens", "max_tokens", "stop after this many training tokens"),
    ("--time-budget", "time_budget", "stop after this much training time, evaluations included, e.g. 90s, 5m, 1h "
     "(default 3m when no other stop condition is set; preparing the data comes first and is not counted). "
     "Stop conditions given with --resume replace the run's saved ones"),
    ("--eval-interval", "eval_interval", "evaluate, sample and checkpoint every N steps (default 100)"),
    ("--eval-batches", "eval_batches", "validation batches per evaluation (default 8)"),
    ("--eval-batch-size", "eval_batch_size", "windows per evaluation batch (default 0: the training batch)"),
    ("--eval-train-batches", "eval_train_batches", "also evaluate on this many fixed training batches (default 0: report the running training loss)"),
    ("--sample-prompt", "sample_prompt", "prompt for the samples printed at each evaluation"),
    ("--sample-tokens", "sample_tokens", "tokens per sample (default 80)"),
    ("--checkpoint-interval", "checkpoint_interval", "checkpoint every N steps (default: at each evaluation)"),
    ("--keep-last", "keep_last", "step checkpoints to keep besides best/ (default 2)"),
    ("--device", "device", "auto | cpu | cuda | cuda:N | mps (default auto)"),
    ("--precision", "precision", "auto (bf16 autocast where bf16 is fast) | bf16 | fp32 (default auto)"),
    ("--seed", "seed", "random seed (default 1337)"),
    ("--out", "out", "run folder to create (default runs/<data>-<time>); a non-empty one needs --overwrite"),
]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pretrain`` and ``export``."""
    from gptlab.train.config import TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser(
        "pretrain",
        help="pretrain a GPT model (the main job; no arguments: a small model on Python's own sources)",
        description="Pretrain a GPT model. With no arguments it trains a small model on the running "
        "Python's standard-library sources for 3 minutes, then tells you what to do next. "
        "Launch the same command under torchrun for data-parallel training on several GPUs or CPUs.",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML or YAML file with any of these settings ([model] table for model fields)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    for flag, field, help_text in _FLAGS:
        kind = type(getattr(defaults, field))
        p.add_argument(flag, dest=field, type=kind, default=None, help=help_text)
    p.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                   help="compile the model with torch.compile (falls back to eager with a warning)")
    p.add_argument("--model-set", dest="model_set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model field, e.g. --model-set n_layers=6 --model-set drop_rate=0.0, "
                   "--model-set n_kv_heads=1, --model-set qk_norm=true, --model-set head_size=none")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoints are deleted once the new run starts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final result as JSON")
    p.set_defaults(func=_pretrain)

    e = sub.add_parser("export", help="write a run's model in the Hugging Face format (GPT-2 or Llama) or as GGUF",
                       description="Write a pretraining run's model as config.json + model.safetensors, "
                       "loadable by transformers (GPT2LMHeadModel for GPT-2 presets, LlamaForCausalLM for "
                       "llama-* presets) and by gptlab generate --model DIR; or, with --format gguf, as one "
                       ".gguf file with its tokenizer, for llama.cpp and Ollama (and gptlab generate --model FILE.gguf).")
    e.add_argument("run_dir", help="a folder written by gptlab pretrain")
    e.add_argument("--out", required=True,
                   help="output folder to create, e.g. RUN/hf (not the run folder itself); a non-empty one needs "
                   "--overwrite. With --format gguf: a file ending in .gguf")
    e.add_argument("--checkpoint", default="best", help="best (default), latest, or a step number")
    e.add_argument("--format", choices=("hf", "gguf"), default="hf",
                   help="hf: a Hugging Face folder (default); gguf: one file for llama.cpp / Ollama (BPE tokenizers)")
    e.add_argument("--outtype", choices=("f32", "bf16", "q8_0", "q4_0"), default=None,
                   help="weight type of a GGUF file (default f32; q8_0 is 8-bit, about a quarter of f32's size; "
                        "q4_0 4-bit, about an eighth, read back by gptlab as int4 layers)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    e.set_defaults(func=_export)


def _parse_model_set(items: list[str]) -> dict:
    """``--model-set FIELD=VALUE`` items as GPTConfig overrides, each value typed as its field is."""
    from gptlab.train.config import parse_model_value

    out = {}
    for item in items:
        if "=" not in item:
            raise GptlabError(f"--model-set {item!r}: expected FIELD=VALUE, e.g. n_layers=6")
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_model_value(key.strip(), raw)
    return out


# Flags where 0 would mean "not set" in a config file; given on the command line, 0 is a mistake.
_POSITIVE_FLAGS = {"max_steps": "--max-steps", "epochs": "--epochs", "max_tokens": "--max-tokens"}


def _check_flags(args: argparse.Namespace) -> None:
    for field, flag in _POSITIVE_FLAGS.items():
        value = getattr(args, field)
        if value is not None and value <= 0:
            raise GptlabError(f"{flag} must be positive, got {value:g}")
    if args.time_budget is not None:
        from gptlab.train.config import parse_duration

        if parse_duration(args.time_budget) <= 0:
            raise GptlabError(f"--time-budget must be a positive duration like 90s, 5m or 1h, got {args.time_budget!r}")
    if args.overwrite and args.resume:
        raise GptlabError("--overwrite starts a new run; it cannot be combined with --resume")


def _stop_text(result, cfg) -> str:
    """Why the run ended, in words."""
    reasons = {
        "max_steps": f"it reached --max-steps {cfg.max_steps:,}",
        "max_tokens": f"it reached --max-tokens {cfg.max_tokens:,}",
        "epochs": f"it completed --epochs {cfg.epochs:g}",
        "time_budget": f"its --time-budget {cfg.time_budget} was used up",
        "interrupted": "it was interrupted (Ctrl-C); the checkpoint holds the exact position",
        "callback": "a callback asked it to stop",
    }
    return reasons.get(result.stopped_by, result.stopped_by)


def _pretrain(args: argparse.Namespace) -> int:
    from gptlab.train import pretrain, resolve_run_config

    _check_flags(args)
    overrides = {field: getattr(args, field) for _, field, _ in _FLAGS}
    overrides["compile"] = args.compile
    if args.model_set:
        overrides["model"] = _parse_model_set(args.model_set)
    cfg, run_dir = resolve_run_config(overrides, args.config, args.resume)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    wall = time.perf_counter()
    result = pretrain(cfg, resume=run_dir, progress=not args.no_progress, log=log, overwrite=args.overwrite)
    wall = time.perf_counter() - wall
    code = 130 if result.stopped_by == "interrupted" else 0
    if args.json:
        print(json.dumps(result.to_dict() | {"wall_seconds": round(wall, 3)}, indent=2))
        return code
    run = result.run_dir
    print()
    print(f"run saved in {run}  ({result.step} steps, {result.tokens:,} tokens, {result.elapsed:.0f}s of training, "
          f"{result.tokens_per_sec:,.0f} tokens/s" + (f", MFU {result.mfu:.1%}" if result.mfu else "") + ")")
    if args.resume:
        print(f"stopped because {_stop_text(result, cfg)}; this session took {wall:.0f}s of wall time")
    else:
        print(f"stopped because {_stop_text(result, cfg)}; {wall:.0f}s of wall time in all "
              f"(the rest: preparing data, loading, the first evaluation)")
    if result.val_loss is not None:
        best = f" (best {result.best_val_loss:.4f})" if result.best_val_loss is not None else ""
        print(f"last validation loss {result.val_loss:.4f}{best}; curves: {run / 'loss.png'}")
    prompt = cfg.sample_prompt or ("def main(" if cfg.data == "python-stdlib" else "The")
    print("next:")
    if code and result.step:
        print(f"  continue it:           gptlab pretrain --resume {run}")
    print(f"  sample from it:        gptlab generate --model {run} --prompt '{prompt}' --max-new-tokens 100")
    print(f"  train it longer:       gptlab pretrain --resume {run} --max-steps {2 * max(result.step, 1)}")
    print(f"  export it (HF format): gptlab export {run} --out {run}/hf")
    return code


def _export_gguf(args: argparse.Namespace) -> int:
    """``export --format gguf``: one file, checked before the (slow) model load, written atomically."""
    from pathlib import Path

    from gptlab.model.gguf_export import write_gguf
    from gptlab.model.run_folder import checkpoint_dir, load_run

    out = Path(args.out)
    if out.suffix.lower() != ".gguf":
        raise GptlabError(f"--out {args.out!r}: a GGUF export is one file; give a path ending in .gguf")
    if out.is_dir():
        raise GptlabError(f"--out {args.out!r} is a folder; a GGUF export is one file ending in .gguf")
    if out.exists():
        if not args.overwrite:
            raise GptlabError(f"--out {args.out!r} exists; pass --overwrite to replace it")
        with open(out, "rb") as handle:
            if handle.read(4) != b"GGUF":  # --overwrite replaces an earlier export, nothing else
                raise GptlabError(f"--out {args.out!r} is not a GGUF file; --overwrite replaces only an earlier export")
    model, tokenizer = load_run(args.run_dir, args.checkpoint)
    outtype = args.outtype or "f32"
    arch = write_gguf(model, tokenizer, out, outtype=outtype, name=Path(args.run_dir).resolve().name)
    print(f"wrote {out} ({arch}, {outtype}) from {checkpoint_dir(args.run_dir, args.checkpoint)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        return _export_gguf(args)
    if args.outtype is not None:
        raise GptlabError("--outtype sets the weight type of a GGUF file; it needs --format gguf")
    from gptlab.io import atomic_write_text
    from gptlab.model.load import EXPORTED_TOKENIZER
    from gptlab.model.run_folder import checkpoint_dir, load_run
    from gptlab.tokenizer import BPETokenizer
    from gptlab.tokenizer.hf_writer import save_pretrained_tokenizer
    from gptlab.outdir import StagedOutDir, is_run_dir

    out = StagedOutDir(args.out, overwrite=args.overwrite, kind="exported model folder",
                       is_same_kind=lambda p: (p / "config.json").is_file() and not is_run_dir(p))
    model, tokenizer = load_run(args.run_dir, args.checkpoint)
    with out.claim() as work:
        model.save_pretrained(work)
        if isinstance(tokenizer, BPETokenizer):
            # A complete Hugging Face folder: tokenizer.json + tokenizer_config.json (template included).
            save_pretrained_tokenizer(tokenizer, work, model_max_length=model.cfg.context_length)
        else:
            # Character and word tokenizers have no Hugging Face equivalent: gptlab's format, under a
            # name of its own, since Hugging Face tools read any tokenizer.json as theirs.
            tokenizer.save(work / EXPORTED_TOKENIZER)
        # The config's begin/end ids are the tokenizer's (GPT-2's config names 50256 for both).
        eos = tokenizer.stop_ids[0] if tokenizer.stop_ids else None
        bos = tokenizer.token_id(tokenizer.bos_token)
        hf_config = json.loads((work / "config.json").read_text(encoding="utf-8"))
        hf_config["eos_token_id"] = eos
        hf_config["bos_token_id"] = bos if bos is not None else eos
        atomic_write_text(work / "config.json", json.dumps(hf_config, indent=2) + "\n")
    print(f"wrote {out.path} from {checkpoint_dir(args.run_dir, args.checkpoint)}")
    return 0
