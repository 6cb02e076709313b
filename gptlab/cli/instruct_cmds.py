"""``gptlab instruct train|generate|eval``: instruction fine-tuning and evaluating the answers (the book's chapter 7)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gptlab.cli.quantize_cmds import add_quantize_flags, quantize_options
from gptlab.errors import GptlabError

# Trainer flags that make sense for fine-tuning: flag -> TrainConfig field, help.
_TRAIN_FLAGS: list[tuple[str, str, str]] = [
    ("--batch-size", "batch_size", "examples per batch (default 8, as the book)"),
    ("--lr", "lr", "learning rate (default 5e-5, constant, as the book)"),
    ("--min-lr", "min_lr", "learning rate at the end of the cosine decay (default = --lr: constant)"),
    ("--warmup-steps", "warmup_steps", "linear warmup steps (default 0)"),
    ("--weight-decay", "weight_decay", "AdamW weight decay (default 0.1)"),
    ("--grad-clip", "grad_clip", "clip the gradient norm (0 = off, the default)"),
    ("--epochs", "epochs", "passes over the training split (default 2)"),
    ("--max-steps", "max_steps", "stop after this many steps"),
    ("--time-budget", "time_budget", "stop after this wall time, e.g. 5m"),
    ("--eval-interval", "eval_interval", "evaluate, sample and checkpoint every N steps (default 20)"),
    ("--eval-batches", "eval_batches", "validation batches per evaluation (default: all)"),
    ("--eval-train-batches", "eval_train_batches", "training batches evaluated too (default 5, as the book)"),
    ("--sample-prompt", "sample_prompt", "prompt of the sample printed at each evaluation (default: the first validation example)"),
    ("--sample-tokens", "sample_tokens", "tokens per sample (default 60)"),
    ("--keep-last", "keep_last", "step checkpoints to keep besides best/ (default 2)"),
    ("--device", "device", "auto | cpu | cuda | cuda:N | mps"),
    ("--precision", "precision", "auto (bf16 autocast where fast) | bf16 | fp32"),
    ("--seed", "seed", "random seed for the batch order and LoRA init (default 123, as the book)"),
    ("--out", "out", "run folder (default runs/instruct-<time>)"),
]


def _split_seed(text: str) -> int | None:
    if text == "book":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected 'book' (no shuffle) or an integer seed") from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``instruct`` with its ``train``, ``generate`` and ``eval`` verbs."""
    from gptlab.train.config import TrainConfig

    p = sub.add_parser("instruct", help="instruction fine-tuning: train, generate answers, evaluate them",
                       description="Fine-tune a model to follow instructions (the book's chapter 7), "
                       "answer a test set with it, and score the answers.")
    verbs = p.add_subparsers(dest="instruct_verb", metavar="VERB")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    t = verbs.add_parser("train", help="fine-tune a model on instruction data",
                         description="Fine-tune a model on instruction/input/output examples, on the "
                         "pretraining trainer (progress, metrics.jsonl, loss.png, checkpoints, --resume). "
                         "The run folder loads like any run (gptlab generate --model RUN) and holds "
                         "prompt_style.json and data/{train,test,val}.json.")
    t.add_argument("--data", default=None, help="instruction-data (the book's 1,100 examples) or a JSON/JSONL file "
                   "(default instruction-data)")
    t.add_argument("--model", default=None, help="starting model: a run folder, a Hugging Face folder, a hub name "
                   "(gpt2, gpt2-medium, ...) or a preset")
    t.add_argument("--style", default=None, help="prompt style: alpaca (default), phi3, a template file (.txt or "
                   ".json), or a template string with {instruction} and {input}")
    t.add_argument("--chat-template", default=None, help="for chat data ({messages: [...]} entries): a Jinja chat "
                   "template file or string (default: the model tokenizer's own); loss is on assistant turns only")
    t.add_argument("--mask-prompt", action="store_const", const=True, default=None,
                   help="no loss on the prompt's tokens (instruction + input), only on the answer")
    t.add_argument("--max-length", type=int, default=None, help="truncate examples to N tokens (default: the context length)")
    t.add_argument("--split-seed", type=_split_seed, default="book",
                   help="'book' (default: the file's order, 935/110/55 for instruction-data) or a seed to shuffle first")
    t.add_argument("--drop-rate", type=float, default=None, help="set the model's dropout (default: keep the model's)")
    t.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters of this rank instead of every weight")
    t.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 16)")
    t.add_argument("--lora-targets", default=None,
                   help="layers to adapt, comma-separated: attn, qkv, ff, head, all (GPT-2 or Llama layout), "
                        "q, k, v, o, gate, up, down (Llama/Qwen), or name patterns like 'blocks.*.att.q_proj' "
                        "(default attn,ff)")
    t.add_argument("--lora-dropout", type=float, default=None, help="dropout on the LoRA path (default 0)")
    t.add_argument("--config", metavar="FILE", help="TOML/YAML/JSON file with trainer settings")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an instruct run from its newest checkpoint")
    defaults = TrainConfig()
    for flag, field, help_text in _TRAIN_FLAGS:
        t.add_argument(flag, dest=field, type=type(getattr(defaults, field)), default=None, help=help_text)
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=_train)

    g = verbs.add_parser("generate", help="answer a test set with a model (batched, resumable)",
                         description="Answer every entry of an instruction (or chat) file; writes the entries "
                         "with a model_response field beside each reference output. Rewritten after every batch: "
                         "run the same command again to continue an interrupted run.")
    g.add_argument("--model", required=True, help="the fine-tuned run folder (or any model spec)")
    g.add_argument("--data", required=True, help="instruction file (e.g. RUN/data/test.json) or data set name")
    g.add_argument("--split", choices=["all", "train", "test", "val"], default="all",
                   help="answer only this part of the book's 85/10/5 split of --data (default all)")
    g.add_argument("--split-seed", type=_split_seed, default="book", help="as for instruct train (default book)")
    g.add_argument("--out", default=None,
                   help="output JSON (default <data>-with-response.json in this folder); an existing one is "
                        "continued, or replaced with --overwrite, only if instruct generate wrote it")
    g.add_argument("--style", default=None, help="prompt style (default: the model's prompt_style.json, else its "
                   "tokenizer's chat template, else alpaca); chat entries ({messages}) are prompted with the "
                   "conversation before their last assistant message")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default 8)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    g.add_argument("--seed", type=int, default=123,
                   help="sampling seed (default 123); each prompt has its own generator seeded with it, so an "
                        "answer does not depend on its batch")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    add_quantize_flags(g)
    g.add_argument("--overwrite", action="store_true",
                   help="start over instead of continuing an existing --out (only an answers file is replaced)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.set_defaults(func=_generate)

    e = verbs.add_parser("eval", help="score answers: exact match, token F1, ROUGE-L, and an LLM judge",
                         description="Score the model_response of every entry against its output. With "
                         "--judge-url/--judge-model, an LLM behind any OpenAI-compatible chat endpoint "
                         "(Ollama, gptlab serve, vLLM) scores each answer 0-100 with the book's prompt.")
    e.add_argument("--responses", required=True, help="JSON from gptlab instruct generate")
    e.add_argument("--out", default=None, help="scored JSON (default <responses>-scored.json); judging resumes from it")
    e.add_argument("--judge-url", default=None, help="e.g. http://localhost:11434 (Ollama) or http://localhost:8000")
    e.add_argument("--judge-model", default=None, help="model name at the endpoint, e.g. llama3")
    e.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per judge request (default 120)")
    e.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding a bearer token")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.set_defaults(func=_eval)


def _log_for(args: argparse.Namespace):
    return (lambda msg: print(msg, file=sys.stderr)) if args.json else print


def _train(args: argparse.Namespace) -> int:
    from gptlab.finetune.instruct.train import InstructConfig, finetune, instruct_train_config, resume_finetune

    overrides = {field: getattr(args, field) for _, field, _ in _TRAIN_FLAGS}
    log = _log_for(args)
    task_flags = {"data": args.data, "model": args.model, "style": args.style, "chat_template": args.chat_template,
                  "mask_prompt": args.mask_prompt,
                  "max_length": args.max_length, "drop_rate": args.drop_rate, "lora_rank": args.lora_rank,
                  "lora_alpha": args.lora_alpha, "lora_targets": args.lora_targets,
                  "lora_dropout": args.lora_dropout}
    if args.resume:
        given = [k for k, v in task_flags.items() if v is not None]
        if given or args.config:
            name = given[0] if given else "config"
            raise GptlabError(f"--{name.replace('_', '-')} cannot change when resuming {args.resume}; "
                              "the run's own settings are used")
        if args.overwrite:
            raise GptlabError("--overwrite starts a new run; it cannot be combined with --resume")
        result = resume_finetune(args.resume, overrides, progress=not args.no_progress, log=log)
    else:
        if args.model is None:
            raise GptlabError("--model is required: the model to fine-tune (run folder, HF folder, gpt2-medium, ...)")
        icfg = InstructConfig(**{k: v for k, v in task_flags.items() if v is not None},
                              split_seed=args.split_seed)
        if icfg.lora_rank < 0:
            raise GptlabError(f"--lora-rank must be >= 0, got {icfg.lora_rank}")
        tcfg = instruct_train_config(overrides, args.config)
        result = finetune(icfg, tcfg, progress=not args.no_progress, log=log, overwrite=args.overwrite)
    code = 130 if result.stopped_by == "interrupted" else 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return code
    run = result.run_dir
    history = [h for h in result.history if h.get("val_loss") is not None]
    print()
    print(f"run saved in {run}  ({result.step} steps, {result.elapsed:.0f}s)")
    if history:
        print(f"validation loss {history[0]['val_loss']:.4f} -> {history[-1]['val_loss']:.4f} "
              + (f"(best {result.best_val_loss:.4f})" if result.best_val_loss is not None else "")
              + f"; curves: {run / 'loss.png'}")
    print("next:")
    print(f"  answer the test split: gptlab instruct generate --model {run} --data {run}/data/test.json "
          f"--out {run}/test-with-response.json")
    print(f"  score the answers:     gptlab instruct eval --responses {run}/test-with-response.json")
    return code


def _generate(args: argparse.Namespace) -> int:
    from gptlab.finetune.instruct.data import load_examples, resolve_data, split_examples
    from gptlab.finetune.instruct.generate import generate_responses

    entries = load_examples(args.data, require_output=False)
    if args.split != "all":
        entries = split_examples(entries, seed=args.split_seed)[args.split]
        if not entries:
            raise GptlabError(f"--split {args.split}: no entries in that part of {args.data}")
    data_path = resolve_data(args.data)
    out = args.out or f"{data_path.stem}-with-response.json"
    summary = generate_responses(
        args.model, entries, out, style=args.style, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
        overwrite=args.overwrite, progress=not args.no_progress, device=args.device, log=_log_for(args),
        data_path=data_path, **quantize_options(args),
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {summary['total']} answers to {Path(out)} ({summary['generated']} generated now, "
              f"{summary['resumed']} from an earlier run)")
        print(f"next: gptlab instruct eval --responses {out}")
    return 0


def _check_scores_out(out: Path, responses: Path) -> None:
    """An explicit ``instruct eval --out`` must be writable, and replace only scores that eval wrote.

    The scores file is rewritten after every judged answer, so anything else there (the responses
    themselves, a user's file) would be lost at the first save.
    """
    from gptlab.finetune.instruct.generate import check_output_file

    check_output_file(out, "--out", responses, "--responses")
    if not out.exists():
        return
    try:
        saved = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if not (isinstance(saved, dict) and "summary" in saved and "entries" in saved):
        raise GptlabError(f"--out {out}: exists and is not a scores file of gptlab instruct eval; refusing to "
                          "replace it; delete it yourself or choose another --out")


def _eval(args: argparse.Namespace) -> int:
    import os

    from gptlab.finetune.instruct.evaluate import evaluate_responses

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise GptlabError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    if args.out:
        _check_scores_out(Path(args.out).expanduser(), Path(args.responses).expanduser())
    summary = evaluate_responses(args.responses, args.out, args.judge_url, args.judge_model, args.judge_timeout,
                                 api_key, progress=not args.no_progress, log=_log_for(args))
    judge = summary.get("judge")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['n']} answers in {summary['responses']}")
        print(f"  exact match  {summary['exact_match']:.3f}")
        print(f"  token F1     {summary['token_f1']:.3f}")
        print(f"  ROUGE-L      {summary['rouge_l']:.3f}")
        if judge:
            avg = f"{judge['average']:.2f}" if judge["average"] is not None else "-"
            print(f"  judge ({judge['model']}): average {avg} over {judge['scored']} scored answers; "
                  f"{judge['unscorable']} replies unscorable, {judge['rejected']} requests rejected, "
                  f"{judge['not_judged']} not judged")
            peak = max([b["count"] for b in judge["histogram"]] + [1])
            for b in judge["histogram"]:
                bar = "#" * round(40 * b["count"] / peak)
                print(f"    {b['low']:>3}-{b['high']:<3} {b['count']:>4} {bar}")
        print(f"scores saved in {summary['out']}")
    if judge and judge["error"]:
        print(f"gptlab: error: {judge['error']}; {judge['judged']} of {summary['n']} answers judged and saved in "
              f"{summary['out']} (run the command again to judge the rest)", file=sys.stderr)
        return 1
    return 0
