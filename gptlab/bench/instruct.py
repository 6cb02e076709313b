"""``gptlab bench instruct``: the book's chapter 7 pipeline end to end, timed.

Fine-tune ``--model`` on the 935-example training split of ``instruction-data`` for 2 epochs, answer
the 110 test instructions, and score the answers (exact match, token F1, ROUGE-L; the LLM judge too
with ``--judge-url``/``--judge-model``). The target: all of it within 15 minutes on a 2-core CPU with a
small gptlab-pretrained model, and a validation loss that falls.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 15 * 60


def _quiet(_msg: str) -> None:
    pass


def run_pipeline(model: str, work: Path, lr: float | None = None, epochs: float = 2.0, batch_size: int = 8,
                 max_new_tokens: int = 128, gen_batch: int = 16, judge_url: str | None = None,
                 judge_model: str | None = None, progress: bool = False) -> dict:
    """Train, generate and evaluate; returns the timings, losses and scores."""
    from gptlab.finetune.instruct.data import load_examples
    from gptlab.finetune.instruct.evaluate import evaluate_responses
    from gptlab.finetune.instruct.generate import generate_responses
    from gptlab.finetune.instruct.train import InstructConfig, finetune, instruct_train_config

    run_dir = work / "run"
    overrides = {"epochs": epochs, "batch_size": batch_size, "out": str(run_dir), "lr": lr}
    t0 = time.perf_counter()
    result = finetune(InstructConfig(data="instruction-data", model=model), instruct_train_config(overrides),
                      progress=progress, log=_quiet, overwrite=True)  # the bench owns its work folder
    t_train = time.perf_counter() - t0
    test = load_examples(run_dir / "data" / "test.json")
    answers = work / "test-with-response.json"
    generate_responses(str(run_dir), test, answers, batch_size=gen_batch, max_new_tokens=max_new_tokens,
                       progress=progress, log=_quiet)
    t_generate = time.perf_counter() - t0 - t_train
    scores = evaluate_responses(answers, work / "scored.json", judge_url, judge_model, progress=progress, log=_quiet)
    total = time.perf_counter() - t0
    vals = [h["val_loss"] for h in result.history]
    return {
        "model": model,
        "steps": result.step,
        "train_examples": 935,
        "test_examples": len(test),
        "first_val_loss": vals[0],
        "final_val_loss": vals[-1],
        "first_train_loss": result.history[0].get("train_eval_loss"),
        "seconds_train": t_train,
        "seconds_generate": t_generate,
        "seconds_eval": total - t_train - t_generate,
        "seconds_total": total,
        "exact_match": scores["exact_match"],
        "token_f1": scores["token_f1"],
        "rouge_l": scores["rouge_l"],
        "judge": scores.get("judge"),
        "pass": total <= TARGET_SECONDS and vals[-1] < vals[0],
    }


def register_target(sub: argparse._SubParsersAction) -> None:
    """Add ``gptlab bench instruct``."""
    p = sub.add_parser("instruct", help="chapter 7 end to end: fine-tune 2 epochs, answer 110, score; <= 15 min",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the pretrained model (a gptlab run folder, HF folder or hub name)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the book's 5e-5)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer (default 128)")
    p.add_argument("--gen-batch", type=int, default=16, help="answers generated together (default 16)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for the LLM judge")
    p.add_argument("--judge-model", default=None, help="judge model name at that endpoint")
    p.add_argument("--work-dir", help="keep the run and answers here (default: a temporary folder)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gptlab-bench-instruct-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        r = run_pipeline(args.model, work, lr=args.lr, max_new_tokens=args.max_new_tokens, gen_batch=args.gen_batch,
                         judge_url=args.judge_url, judge_model=args.judge_model, progress=args.progress)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"instruction fine-tuning end to end ({r['model']}, {r['train_examples']} examples x 2 epochs, "
          f"{r['test_examples']} answers)")
    print(f"  validation loss {r['first_val_loss']:.3f} -> {r['final_val_loss']:.3f} in {r['steps']} steps")
    print(f"  time: train {r['seconds_train']:.0f}s, generate {r['seconds_generate']:.0f}s, "
          f"score {r['seconds_eval']:.0f}s, total {r['seconds_total']:.0f}s (target <= {TARGET_SECONDS}s)")
    print(f"  exact match {r['exact_match']:.3f}, token F1 {r['token_f1']:.3f}, ROUGE-L {r['rouge_l']:.3f}")
    if r["judge"]:
        j = r["judge"]
        avg = f"{j['average']:.1f}" if j["average"] is not None else "-"
        print(f"  judge {j['model']}: average {avg} ({j['scored']} scored, {j['unscorable']} unscorable, "
              f"{j['rejected']} rejected"
              + (f"; error: {j['error']}" if j["error"] else "") + ")")
    print(f"  {'PASS' if r['pass'] else 'FAIL'}")
    return 0
