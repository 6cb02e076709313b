"""``gptlab bench pretrain``: the book's chapter 5 check, time to quality against nanoGPT's CPU recipe,
the best loss in 5 minutes, and throughput / MFU.

1. Book check: the-verdict with the book's settings (GPT_CONFIG_124M at context 256, batch 2, AdamW
   lr 4e-4, weight decay 0.1, 10 epochs, seed 123, PyTorch's default init, eval every 5 steps on 5
   batches). The book starts near 10.98 and ends with train loss < 0.7 and validation loss 6.0–6.8.
2. Time to quality on tinyshakespeare, character level, last 10% as validation: wall seconds until the
   validation loss reaches 1.88, for nanoGPT's CPU recipe (:mod:`gptlab.bench.nanogpt_recipe`) and for
   gptlab with its fast settings, in the same run, both evaluated on the whole validation split.
3. The best validation loss gptlab reaches within a wall-clock budget (5 minutes by default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

# torch, numpy and the trainer are imported inside the functions that run a benchmark: `gptlab --help`
# imports this module to register its flags, and torch alone costs it ~2 s (python -X importtime).

TARGET_LOSS = 1.88

# gptlab's settings for the time-to-quality race: the recipe's model shape (4 layers, 4 heads, 128 dims,
# block 64, tied embeddings, no dropout) with what makes it faster on a CPU:
# * bf16 autocast (where bf16 is fast), fused AdamW, a larger batch (32) with a larger learning rate;
# * explicit attention: for heads this small, torch's fused CPU attention kernels (bf16 backward
#   especially) are slower than two batched matmuls and a softmax;
# * exact GELU (as the recipe uses), about 2x cheaper than the tanh form on CPUs;
# * evaluation in batches of 256 windows (the recipe's evaluation batch too).
# Measured on this machine, B=32 reaches the target in ~1.1-1.3M tokens (550-650 steps with lr 4-8e-3);
# B=64 needed 1.8M, B=16 1.0M but at twice the steps. The cosine is planned over 1,000 steps: the run
# stops at the target (~600 steps), while the learning rate is still high enough to keep learning fast.
FAST_CHAR = dict(
    preset="gpt-nano",
    model=dict(emb_dim=128, n_heads=4, n_layers=4, context_length=64, drop_rate=0.0, attn_impl="explicit",
               activation="gelu"),
    block_size=64,
    batch_size=32,
    lr=6e-3,
    min_lr=6e-4,
    warmup_steps=50,
    beta2=0.99,
    max_steps=1000,
    eval_interval=50,
    eval_batch_size=256,
)


def _quiet(_msg: str) -> None:
    pass


def book_check(work: Path, precision: str = "fp32", progress: bool = False) -> dict:
    """Train the book's chapter 5 run on the-verdict; returns first/last losses and pass/fail."""
    from gptlab.train import TrainConfig, pretrain

    cfg = TrainConfig(
        data="the-verdict", tokenizer="gpt2", max_chars=0, val_fraction=0.1, preset="gpt2",
        model=dict(context_length=256, drop_rate=0.1, qkv_bias=False, tie_weights=False), init="torch",
        batch_size=2, block_size=256, sampling="epoch", stride=256, lr=4e-4, min_lr=4e-4, warmup_steps=0,
        weight_decay=0.1, beta1=0.9, beta2=0.999, grad_clip=0.0, epochs=10, time_budget="", eval_interval=5,
        eval_batches=5, eval_train_batches=5, sample_prompt="Every effort moves you", sample_tokens=25, precision=precision,
        seed=123, out=str(work / "book"), keep_last=1,
    )
    result = pretrain(cfg, progress=progress, log=_quiet, overwrite=True)  # the bench owns its work folder
    first, last = result.history[0], result.history[-1]
    ok = (abs(first["val_loss"] - 10.98) < 0.3 and last["train_eval_loss"] < 0.7 and 6.0 <= last["val_loss"] <= 6.8)
    return {
        "first_train_loss": first["train_eval_loss"],
        "first_val_loss": first["val_loss"],
        "final_train_loss": last["train_eval_loss"],
        "final_val_loss": last["val_loss"],
        "steps": result.step,
        "seconds": result.elapsed,
        "tokens_per_sec": result.tokens_per_sec,
        "mfu": result.mfu,
        "precision": precision,
        "book": {"first": 10.98, "final_train_below": 0.7, "final_val_range": [6.0, 6.8]},
        "pass": ok,
    }


def _char_data(work: Path) -> Path:
    from gptlab.data.prep import prepare

    out = work / "shakespeare-char"
    if not (out / "meta.json").is_file():
        prepare("tinyshakespeare", out, tokenizer="char", val_fraction=0.1)
    return out


def time_to_quality(work: Path, target: float = TARGET_LOSS, skip_reference: bool = False) -> dict:
    """nanoGPT's recipe and gptlab racing to ``target`` validation loss, evaluated identically."""
    import numpy as np
    import torch.nn.functional as F

    from gptlab.bench.nanogpt_recipe import run_recipe
    from gptlab.data.prepared import PreparedData
    from gptlab.train import TrainConfig, pretrain
    from gptlab.train.batches import eval_windows

    data_dir = _char_data(work)
    data = PreparedData(data_dir)
    val_batches = eval_windows(data.val.tokens, 64, 0, 256)  # the whole validation split

    def evaluate(model) -> float:
        total, count = 0.0, 0
        for x, y in val_batches:
            logits = model(x)
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
            count += y.numel()
        return total / count

    out: dict = {"target": target}
    if not skip_reference:
        ref = run_recipe(np.asarray(data.train.tokens), data.n_vocab, evaluate, target=target)
        final = ref["history"][-1]
        out["reference"] = {
            "name": "nanoGPT CPU recipe (4L/4H/128d, block 64, batch 12, 2000 iters, fp32)",
            "seconds_to_target": ref["seconds_to_target"],
            "seconds_total": ref["seconds"],
            "final_val_loss": final[2],
            "history": ref["history"],
        }
    n_val_batches = len(val_batches) * 256 // FAST_CHAR["eval_batch_size"] + 1
    history: list = []

    def on_eval(rec: dict) -> bool:
        history.append((rec["step"], rec["elapsed"], rec["val_loss"]))
        return rec["val_loss"] <= target

    cfg = TrainConfig(data=str(data_dir), time_budget="", eval_batches=n_val_batches, sample_tokens=1,
                      out=str(work / "ttq"), keep_last=1, **FAST_CHAR)
    shutil.rmtree(work / "ttq", ignore_errors=True)
    res = pretrain(cfg, progress=False, on_eval=on_eval, log=_quiet)
    reached = next((t for _, t, v in history if v <= target), None)
    out["gptlab"] = {
        "settings": FAST_CHAR,
        "seconds_to_target": reached,
        "final_val_loss": history[-1][2],
        "tokens_per_sec": res.tokens_per_sec,
        "mfu": res.mfu,
        "history": history,
    }
    if "reference" in out:
        ref_time = out["reference"]["seconds_to_target"] or out["reference"]["seconds_total"]
        out["reference_time_used"] = ref_time
        out["ratio"] = (reached / ref_time) if reached else None
        out["pass"] = bool(reached and reached <= 0.5 * ref_time)
    return out


def best_in_budget(work: Path, budget: str = "5m") -> dict:
    """The best validation loss gptlab reaches on tinyshakespeare (char) within ``budget`` wall time."""
    from gptlab.train import TrainConfig, pretrain

    data_dir = _char_data(work)
    # A wider, deeper model than the race's (6 x 192, block 128): over 5 minutes capacity pays off.
    # Measured here: best 1.538 after 1,540 steps (21k tokens/s); the earlier 6 x 256 with dropout 0.1
    # and the tanh GELU / fused attention reached only 1.838 in the same time.
    settings = dict(
        preset="gpt-nano",
        model=dict(emb_dim=192, n_heads=6, n_layers=6, context_length=128, drop_rate=0.0, attn_impl="explicit",
                   activation="gelu"),
        block_size=128, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=100, beta2=0.99, eval_interval=200,
        eval_batch_size=128,
    )
    cfg = TrainConfig(data=str(data_dir), time_budget=budget, eval_batches=15, sample_tokens=1,
                      out=str(work / "budget"), keep_last=1, **settings)
    shutil.rmtree(work / "budget", ignore_errors=True)
    res = pretrain(cfg, progress=False, log=_quiet)
    return {
        "budget": budget,
        "best_val_loss": res.best_val_loss,
        "final_val_loss": res.val_loss,
        "steps": res.step,
        "seconds": res.elapsed,
        "tokens_per_sec": res.tokens_per_sec,
        "mfu": res.mfu,
        "settings": settings,
    }


def register_target(sub: argparse._SubParsersAction) -> None:
    """Add ``gptlab bench pretrain``."""
    p = sub.add_parser(
        "pretrain",
        help="book check, time to quality vs nanoGPT's CPU recipe, best loss in 5 minutes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--skip-book", action="store_true", help="skip the book's chapter 5 check (~5 min fp32 on 2 cores)")
    p.add_argument("--skip-race", action="store_true", help="skip the time-to-quality race")
    p.add_argument("--skip-reference", action="store_true", help="race without running nanoGPT's recipe")
    p.add_argument("--skip-budget", action="store_true", help="skip the best-loss-in-a-budget run")
    p.add_argument("--budget", default="5m", help="wall time for the best-loss run (default 5m)")
    p.add_argument("--book-precision", default="fp32", choices=["fp32", "bf16"], help="precision of the book check")
    p.add_argument("--work-dir", help="keep runs here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gptlab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if not args.skip_book:
        out["book_check"] = book_check(work, args.book_precision)
        _print_book(out["book_check"], args.json)
    if not args.skip_race:
        out["time_to_quality"] = time_to_quality(work, skip_reference=args.skip_reference)
        _print_race(out["time_to_quality"], args.json)
    if not args.skip_budget:
        out["best_in_budget"] = best_in_budget(work, args.budget)
        _print_budget(out["best_in_budget"], args.json)
    out["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(out, indent=2))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _fmt_mfu(m) -> str:
    return f"{m:.1%}" if m is not None else "n/a"


def _print_book(r: dict, quiet: bool) -> None:
    if quiet:
        return
    print("book check (the-verdict, GPT_CONFIG_124M at context 256, 10 epochs, seed 123)")
    print(f"  first loss   train {r['first_train_loss']:.3f}  val {r['first_val_loss']:.3f}   (book: ~10.98)")
    print(f"  final loss   train {r['final_train_loss']:.3f}  val {r['final_val_loss']:.3f}   (book: train < 0.7, val 6.0-6.8)")
    print(f"  {r['steps']} steps in {r['seconds']:.0f}s, {r['tokens_per_sec']:,.0f} tokens/s, MFU {_fmt_mfu(r['mfu'])} "
          f"({r['precision']})   {'PASS' if r['pass'] else 'FAIL'}")


def _print_race(r: dict, quiet: bool) -> None:
    if quiet:
        return
    print(f"time to validation loss {r['target']} (tinyshakespeare, char level, whole validation split)")
    if "reference" in r:
        ref = r["reference"]
        reached = f"{ref['seconds_to_target']:.1f}s" if ref["seconds_to_target"] else f"not reached (final {ref['final_val_loss']:.3f})"
        print(f"  nanoGPT recipe : {reached}; whole run {ref['seconds_total']:.1f}s")
    g = r["gptlab"]
    reached = f"{g['seconds_to_target']:.1f}s" if g["seconds_to_target"] else f"not reached (final {g['final_val_loss']:.3f})"
    print(f"  gptlab         : {reached}  ({g['tokens_per_sec']:,.0f} tokens/s, MFU {_fmt_mfu(g['mfu'])})")
    if "ratio" in r:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "n/a"
        print(f"  ratio gptlab / reference {ratio} (target <= 0.50)   {'PASS' if r['pass'] else 'FAIL'}")


def _print_budget(r: dict, quiet: bool) -> None:
    if quiet:
        return
    print(f"best validation loss in {r['budget']} (tinyshakespeare, char level)")
    print(f"  best {r['best_val_loss']:.4f} after {r['steps']} steps ({r['seconds']:.0f}s, "
          f"{r['tokens_per_sec']:,.0f} tokens/s, MFU {_fmt_mfu(r['mfu'])})")
