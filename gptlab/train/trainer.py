"""Pretraining: the loop that turns a corpus and a model config into a run folder.

A run folder holds everything needed to look at, continue, or use the run:

    RUN/config.json         the effective TrainConfig + the model's GPTConfig
    RUN/tokenizer.json      the tokenizer (or a reference to "gpt2" in config.json)
    RUN/data/               the prepared token files (memory-mapped; see gptlab.data.prepare)
    RUN/metrics.jsonl       one line per evaluation: step, tokens, seconds, losses, lr
    RUN/loss.png            train/val loss against tokens seen, redrawn at each evaluation
    RUN/checkpoints/        step-NNNNNNNN/ (last N) and best/ (lowest validation loss)

Setting a run up (its effective config, the checks, the data and the tokenizer) is
:mod:`gptlab.train.setup`; this module is the loop. Resuming (``resume=RUN``) restores model, optimizer, step, data position and every RNG state from the
newest checkpoint, so the continued run computes exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text
from gptlab.model.config import GPTConfig
from gptlab.model.device import autocast, pick_device, use_bf16
from gptlab.model.gpt import GPT
from gptlab.model.run_folder import (
    CONFIG_FILE, latest_checkpoint, list_checkpoints, load_model_weights, load_state, read_run_config,
)
from gptlab.outdir import RUN_FORMAT, OutDir, is_run_dir
from gptlab.train.batches import EpochWindows, RandomWindows, eval_windows
from gptlab.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from gptlab.train.config import TrainConfig, parse_duration
from gptlab.train.distributed import all_reduce_mean, broadcast_flag, init_distributed, shutdown
from gptlab.train.flops import flops_per_token, peak_flops
from gptlab.train.metrics import MetricsLog, plot_curves
from gptlab.train.optim import make_optimizer
from gptlab.train.schedule import lr_at
from gptlab.train.setup import check_settings, default_run_dir, prepare_run_data
from gptlab.train.task import TrainTask, load_trainable_state, trainable_state
from gptlab.tokenizer import save_tokenizer

# loss.png is redrawn at an evaluation only if this long has passed since it was last drawn (and
# always when the run ends): matplotlib takes ~0.3 s a plot, which with frequent evaluations of a
# small model was a tenth of the run (the time-to-quality race: 21 plots in 80 s). A plot can take
# longer than that (0.6 s each in a 60 s race, on a busy 2-core host), so the wait is also at least
# PLOT_COST_RATIO times the last plot's duration: plots stay under ~2% of the run whatever they cost.
PLOT_INTERVAL_S = 10.0
PLOT_COST_RATIO = 50.0

@dataclass
class RunResult:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    step: int
    tokens: int
    elapsed: float
    stopped_by: str
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    tokens_per_sec: float = 0.0
    mfu: float | None = None
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "history"}
        d["run_dir"] = str(self.run_dir)
        return d


# --------------------------------------------------------------------------- configuration


class TrainingRun:
    """State of one training process (one rank): set up by :func:`pretrain`, which is how to start one.

    Public so that tests and tools can reach its steps (``_train_step``) to interrupt or instrument a run.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path | None, resuming: bool, progress: bool, log,
                 task: TrainTask | None = None):
        self.cfg = cfg
        self.task = task
        self.log = log
        self.progress = progress
        self.device = pick_device(cfg.device)
        self.info = init_distributed(self.device.type)
        if self.info.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank)
        self.run_dir = run_dir or (Path(cfg.out) if cfg.out else default_run_dir(cfg))
        if self.info.enabled:  # every rank must agree on the folder rank 0 chose
            names = [str(self.run_dir)]
            torch.distributed.broadcast_object_list(names, src=0)
            self.run_dir = Path(names[0])
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed + self.info.rank)

        if task is not None:  # fine-tuning: the task brings the model, tokenizer and batches
            self.data = None
            self.tokenizer = task.tokenizer
            torch.manual_seed(cfg.seed)  # adapters initialise identically on every rank and on resume
            self.model = task.build_model()
            model_cfg = self.model.cfg
        else:
            self.data = prepare_run_data(cfg, self.run_dir, self.info, log)
            self.tokenizer = self.data.tokenizer()
            # The tokenizer sets the vocabulary. A [model] vocab_size that says otherwise cannot work:
            # fewer rows cut tokens off, and extra ones would be sampled as ids the tokenizer lacks.
            overrides = dict(cfg.model)
            vocab_size = overrides.pop("vocab_size", self.data.n_vocab)
            if vocab_size != self.data.n_vocab:
                raise GptlabError(f"model field vocab_size={vocab_size}: the tokenizer has {self.data.n_vocab} "
                                  f"tokens and sets it; drop the setting")
            model_cfg = GPTConfig.from_preset(cfg.preset, vocab_size=vocab_size, **overrides)
        self.block = cfg.block_size or model_cfg.context_length
        if self.block > model_cfg.context_length:
            raise GptlabError(f"block_size {self.block} exceeds the model's context_length {model_cfg.context_length}")
        self.model_cfg = model_cfg
        if task is None:
            # Same initial weights on every rank: seed the init identically, then offset per rank for dropout.
            torch.manual_seed(cfg.seed)
            self.model = GPT(model_cfg)
            if cfg.init == "torch":
                for module in self.model.modules():
                    if module is not self.model and hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        self.model = self.model.to(self.device)
        torch.manual_seed(cfg.seed + self.info.rank)

        tokens_per_micro = cfg.batch_size * self.block
        world_tokens = tokens_per_micro * self.info.world_size
        self.accum = max(1, math.ceil(cfg.global_batch_tokens / world_tokens)) if cfg.global_batch_tokens else 1
        self.tokens_per_step = world_tokens * self.accum
        if cfg.global_batch_tokens and self.tokens_per_step != cfg.global_batch_tokens and not resuming \
                and self.info.is_main and task is None:
            log(f"note: global batch {cfg.global_batch_tokens:,} tokens rounded up to {self.tokens_per_step:,} "
                f"({self.accum} micro-batch{'es' if self.accum > 1 else ''} of {cfg.batch_size} x {self.block} tokens"
                + (f" on {self.info.world_size} processes" if self.info.world_size > 1 else "") + ")")
        if task is not None:
            self.sampler = task.sampler
        elif cfg.sampling == "epoch":
            self.sampler = EpochWindows(
                self.data.train.tokens, self.block, cfg.batch_size, cfg.seed, cfg.stride or self.block,
                rank=self.info.rank, world_size=self.info.world_size,
            )
        else:
            self.sampler = RandomWindows(
                self.data.train.tokens, self.block, cfg.batch_size, cfg.seed,
                rank=self.info.rank, world_size=self.info.world_size,
            )
        # The evaluation windows depend on the global batch only, so a run on N processes evaluates the
        # same windows as one process with the same global batch (every rank evaluates all of them).
        eval_batch = cfg.eval_batch_size or cfg.batch_size * self.info.world_size
        if task is not None:
            self.val_batches, self.train_eval_batches = task.val_batches, task.train_eval_batches
        else:
            self.val_batches = eval_windows(self.data.val.tokens, self.block, cfg.eval_batches, eval_batch)
            self.train_eval_batches = (
                eval_windows(self.data.train.tokens, self.block, cfg.eval_train_batches, eval_batch)
                if cfg.eval_train_batches else []
            )

        self.optimizer = make_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
        self.use_bf16 = use_bf16(cfg.precision, self.device)
        self.autocast = lambda: autocast(self.device, self.use_bf16)
        self.train_model = self.model
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.compiled = False
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
            self.compiled = True

        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.best_val: float | None = None
        self.total_steps = self._planned_steps()
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self._plotted_at: float | None = None  # perf_counter of the last loss.png drawn (None: not yet)
        self._plot_wait = PLOT_INTERVAL_S  # seconds until the next plot may be drawn
        self._plot_pending = False
        if resuming:
            self._restore()
        elif self.info.is_main:
            self._write_run_config()
        warmup = cfg.warmup_for(self.total_steps)
        if self.total_steps and warmup >= self.total_steps and self.info.is_main:
            log(f"warning: warmup_steps {warmup} is not shorter than the run's {self.total_steps} steps, so the "
                f"learning rate never reaches {cfg.lr:g}; lower --warmup-steps")

    # ------------------------------------------------------------------ planning
    def _planned_steps(self) -> int:
        cfg, plans = self.cfg, []
        if cfg.max_steps:
            plans.append(cfg.max_steps)
        if cfg.max_tokens:
            plans.append(math.ceil(cfg.max_tokens / self.tokens_per_step))
        if cfg.epochs:
            if hasattr(self.sampler, "batches_per_epoch"):  # EpochWindows or a task's sampler
                plans.append(math.ceil(cfg.epochs * self.sampler.batches_per_epoch / self.accum))
            else:
                plans.append(math.ceil(cfg.epochs * len(self.data.train) / self.tokens_per_step))
        return min(plans) if plans else 0  # 0: only a time budget; estimated once steps are timed

    def _write_run_config(self) -> None:
        tok_ref: dict[str, Any]
        if getattr(self.tokenizer, "name", "") == "gpt2":
            tok_ref = {"name": "gpt2"}
        else:
            save_tokenizer(self.tokenizer, self.run_dir)
            tok_ref = {"file": "tokenizer.json"}
        payload = {
            "format": RUN_FORMAT,
            "version": 1,
            "train": self.cfg.to_dict(),
            "model": self.model_cfg.to_dict(),
            "tokenizer": tok_ref,
            "world_size": self.info.world_size,
            "tokens_per_step": self.tokens_per_step,
            "grad_accum": self.accum,
            "precision": "bf16-autocast" if self.use_bf16 else "fp32",
        }
        if self.task is not None:
            payload["task"] = {"name": self.task.name, **self.task.run_info}
        atomic_write_text(self.run_dir / CONFIG_FILE, json.dumps(payload, indent=2))

    def _restore(self) -> None:
        saved = read_run_config(self.run_dir)
        if saved.model != self.model_cfg:
            raise GptlabError(f"cannot resume {self.run_dir}: its model config differs from this command's")
        if saved.world_size != self.info.world_size and self.cfg.sampling == "random":
            self.log(f"note: resuming a {saved.world_size}-process run on {self.info.world_size}; "
                     f"the data order will differ from the original")
        state = self._load_newest_good_checkpoint()
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"][min(self.info.rank, len(state["sampler"]) - 1)])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.elapsed = float(state["elapsed"])
        self.best_val = state.get("best_val")
        self.total_steps = int(state["total_steps"]) if not self._planned_steps() else self._planned_steps()
        budget = parse_duration(self.cfg.time_budget)
        if not self._planned_steps() and budget > self.elapsed and self.total_steps <= self.step:
            # A time-budget run given more time: plan its remaining steps from its average pace so far
            # (re-planned from measured steps shortly after), instead of stopping at the old plan.
            per_step = self.elapsed / max(self.step, 1)
            self.total_steps = self.step + max(1, int((budget - self.elapsed) / per_step * 0.95))
        set_rng_state(state["rng"][min(self.info.rank, len(state["rng"]) - 1)])
        if self.info.is_main:
            self.metrics.truncate_after(self.step)
        self.log(f"resumed {self.run_dir} at step {self.step} ({self.tokens:,} tokens)")

    def _load_newest_good_checkpoint(self) -> dict:
        """Load weights from the newest readable checkpoint and return its training state.

        A damaged newest checkpoint (a truncated file after a crash or a full disk) is skipped, saying
        so, and the one before it is used: losing a few steps beats not resuming at all.
        """
        checkpoints = list_checkpoints(self.run_dir)
        if not checkpoints:
            raise GptlabError(f"{self.run_dir}: no complete checkpoint to resume from")
        problems = []
        for candidate in reversed(checkpoints):
            try:
                state = load_state(candidate.path)
                if self.task is not None and self.task.export_weights is not None:
                    # model.safetensors holds exported (e.g. merged) weights; the base comes from
                    # build_model() and only the trainable tensors were saved, so resuming is exact.
                    load_trainable_state(self.model, state["trainable"])
                else:
                    load_model_weights(self.model, candidate.path)
            except (GptlabError, KeyError) as exc:
                problems.append(f"{candidate.path.name}: {exc}")
                note = ""
                if self.info.is_main:  # set it aside (not deleted) so later saves and resumes skip it
                    aside = candidate.path.parent / f".damaged-{candidate.path.name}"
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(candidate.path, aside)
                    note = f", moved to {aside.name}"
                self.log(f"warning: checkpoint {candidate.path} is damaged ({exc}{note}); "
                         f"resuming from the one before it")
                continue
            return state
        raise GptlabError(f"{self.run_dir}: no readable checkpoint to resume from ({'; '.join(problems)})")

    # ------------------------------------------------------------------ one step
    def _train_step(self, lr: float) -> float:
        if self.compiled and not getattr(self, "_compile_checked", False):
            return self._first_compiled_step(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        self._step_tokens = 0
        for micro in range(self.accum):
            x, y = self.sampler.next()
            self._step_tokens += x.numel() * self.info.world_size  # a task's batches vary in length
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            sync = self.info.enabled and micro < self.accum - 1
            ctx = self.train_model.no_sync() if sync and hasattr(self.train_model, "no_sync") else nullcontext()
            with ctx:
                with self.autocast():
                    _, loss = self.train_model(x, y)
                (loss / self.accum).backward()
            total += loss.item()
        loss_value = total / self.accum
        if not math.isfinite(loss_value):
            raise GptlabError(
                f"the training loss became {loss_value} at step {self.step + 1}; stopped. The last good "
                f"checkpoint is kept in {self.run_dir / 'checkpoints'}; try a lower learning rate (--lr)"
            )
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def _first_compiled_step(self, lr: float) -> float:
        """Run the first step compiled; if compilation fails, warn once and continue in eager mode.

        Compilation happens lazily on the first call, so this is where a missing compiler, an
        unsupported platform or an inductor bug shows up. The step is redone eagerly from the same
        state (the sampler and RNG are rewound), so falling back does not change the run's data.
        """
        self._compile_checked = True
        sampler_state, rng = self.sampler.state_dict(), torch.get_rng_state()
        try:
            return self._train_step(lr)
        except GptlabError:
            raise
        except Exception as exc:  # torch._dynamo / inductor raise many types; any means "cannot compile"
            import warnings

            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          f"training continues without compilation", stacklevel=2)
            self.optimizer.zero_grad(set_to_none=True)
            self.sampler.load_state_dict(sampler_state)
            torch.set_rng_state(rng)
            self.train_model = self.train_model._orig_mod if hasattr(self.train_model, "_orig_mod") else self.model
            self.compiled = False
            return self._train_step(lr)

    @torch.no_grad()
    def _evaluate(self, batches) -> float:
        """Mean next-token loss over every target token of ``batches`` (token-weighted, eval mode)."""
        self.model.eval()
        total, count = 0.0, 0
        for x, y in batches:
            with self.autocast():
                logits = self.model(x.to(self.device))
            y = y.to(self.device).flatten()
            total += F.cross_entropy(logits.float().flatten(0, 1), y, reduction="sum").item()
            count += int((y != -100).sum())  # fine-tuning targets mark padding (and prompts) with -100
        self.model.train()
        return total / count

    def _sample(self) -> str:
        prompt = self.cfg.sample_prompt
        if prompt:
            ids = self.tokenizer.encode(prompt, allowed_special="all")
        elif self.tokenizer.eot_id is not None or self.data is None:
            ids = [self.tokenizer.eot_id or 0]
        else:
            ids = [int(self.data.val.tokens[0])]
        self.model.eval()
        with self.autocast():
            out = self.model.generate(
                torch.tensor([ids], device=self.device), self.cfg.sample_tokens,
                temperature=0.8, top_k=50, seed=self.cfg.seed,
            )
        self.model.train()
        new = out[0, len(ids):].tolist() if isinstance(out, torch.Tensor) else list(out[0])[len(ids):]
        return prompt + self.tokenizer.decode(new)

    def _save(self, val_loss: float | None) -> None:
        best = val_loss is not None and (self.best_val is None or val_loss <= self.best_val)
        if best:
            self.best_val = val_loss
        state = {
            "optimizer": self.optimizer.state_dict(),
            "sampler": self._gather_objects(self.sampler.state_dict()),
            "rng": self._gather_objects(rng_state()),
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "total_steps": self.total_steps,
        }
        weights = None
        if self.task is not None and self.task.export_weights is not None:
            state["trainable"] = trainable_state(self.model)
            weights = self.task.export_weights(self.model)
        if self.info.is_main:
            meta = {"tokens": self.tokens, "val_loss": val_loss, "elapsed": round(self.elapsed, 3)}
            save_checkpoint(self.run_dir, self.step, self.model, state, meta, self.cfg.keep_last, best=best,
                            weights=weights)

    def _gather_objects(self, obj) -> list:
        """Every rank's copy of ``obj`` (rank order), so a resumed rank gets back exactly its own."""
        if not self.info.enabled:
            return [obj]
        out: list = [None] * self.info.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    # ------------------------------------------------------------------ the loop
    def run(self, on_eval: Callable[[dict], None] | None = None) -> RunResult:
        cfg = self.cfg
        budget = parse_duration(cfg.time_budget)
        if not (cfg.max_steps or cfg.max_tokens or cfg.epochs or budget):
            raise GptlabError("no stop condition: set max_steps, epochs, max_tokens or time_budget")
        ckpt_every = cfg.checkpoint_interval or cfg.eval_interval
        bar = None
        if self.progress and self.info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps or None, initial=self.step, unit="step", dynamic_ncols=True,
                       file=sys.stderr, desc=self.task.name if self.task else "pretrain")
        # A time budget covers the evaluations too: the last one (with its sample and checkpoint) is
        # reserved at the end, so the run finishes within the budget rather than one evaluation past it.
        self._eval_seconds = 0.0
        window_losses: list[float] = []
        stopped_by = "steps"
        start_step = self.step  # step timing restarts after a resume (the first steps are slower)
        first_timed: tuple[int, float] | None = None
        try:
            if self.step == 0:
                self._eval_and_log(None, on_eval, bar, save=False)
            start = time.perf_counter() - self.elapsed
            while True:
                if self.total_steps and self.step >= self.total_steps:
                    stopped_by = self._stop_reason()
                    break
                lr = lr_at(self.step, peak=cfg.lr, warmup_steps=cfg.warmup_for(self.total_steps),
                           total_steps=self.total_steps, floor=cfg.min_lr)
                loss = self._train_step(lr)
                window_losses.append(loss)
                self.step += 1
                self.tokens += self._step_tokens  # = tokens_per_step when pretraining
                self.elapsed = time.perf_counter() - start
                if budget and not (cfg.max_steps or cfg.max_tokens or cfg.epochs):
                    # Time-budget runs: plan the cosine from measured step times (after a warm-up step).
                    if self.step == start_step + 2:
                        first_timed = (self.step, self.elapsed)
                    elif first_timed and (self.step == start_step + 6 or self.step % cfg.eval_interval == 0):
                        per_step = (self.elapsed - first_timed[1]) / (self.step - first_timed[0])
                        left = budget - self.elapsed - self._eval_seconds
                        self.total_steps = max(self.step + 1, int(self.step + left / per_step * 0.95))
                        if bar is not None:
                            bar.total = self.total_steps
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}",
                                    tok_s=f"{self.tokens / max(self.elapsed, 1e-9):,.0f}")
                time_up = broadcast_flag(bool(budget) and self.elapsed + self._eval_seconds >= budget,
                                         self.info, self.device)
                done = time_up or (self.total_steps and self.step >= self.total_steps)
                if self.step % cfg.eval_interval == 0 or done:
                    train_loss = all_reduce_mean(sum(window_losses) / len(window_losses), self.info, self.device)
                    window_losses = []
                    save = self.step % ckpt_every == 0 or done
                    if self._eval_and_log(train_loss, on_eval, bar, save=save, lr=lr):
                        stopped_by = "callback"
                        break
                if time_up:
                    stopped_by = "time_budget"
                    break
        except KeyboardInterrupt:
            # Ctrl-C: keep the work. The checkpoint holds the exact position, so --resume continues
            # as if nothing happened (only the partial window of train losses is not logged).
            stopped_by = "interrupted"
            if bar is not None:
                bar.close()
                bar = None
            latest = latest_checkpoint(self.run_dir)
            if self.step and (latest is None or latest.step != self.step):
                self.log(f"interrupted at step {self.step}: saving a checkpoint to resume from")
                self._save(None)
        finally:
            if bar is not None:
                bar.close()
        if self._plot_pending:
            self._plot()
        history = self.metrics.read() if self.info.is_main else []
        last = history[-1] if history else {}
        result = RunResult(
            run_dir=self.run_dir, step=self.step, tokens=self.tokens, elapsed=self.elapsed, stopped_by=stopped_by,
            train_loss=last.get("train_loss"), val_loss=last.get("val_loss"), best_val_loss=self.best_val,
            tokens_per_sec=self.tokens / max(self.elapsed, 1e-9), mfu=self._mfu(), history=history,
        )
        shutdown(self.info)
        return result

    def _stop_reason(self) -> str:
        cfg = self.cfg
        for name in ("max_steps", "max_tokens", "epochs"):
            if getattr(cfg, name):
                return name
        return "time_budget"

    def _eval_and_log(self, train_loss, on_eval, bar, save: bool, lr: float | None = None) -> bool:
        """Evaluate, log, plot, sample, checkpoint; True if ``on_eval`` asks the run to stop."""
        began = time.perf_counter()
        val_loss = self._evaluate(self.val_batches)
        train_eval = self._evaluate(self.train_eval_batches) if self.train_eval_batches else None
        record = {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": round(self.elapsed, 3),
            # Before the first step there is no running training loss; the evaluated one (or none) stands in.
            "train_loss": train_loss if train_loss is not None else train_eval,
            "train_eval_loss": train_eval,
            "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 50.0)),
            "lr": lr,
        }
        if self.info.is_main:
            self.metrics.append(record)
            self._plot_pending = True
            if self._plotted_at is None or time.perf_counter() - self._plotted_at >= self._plot_wait:
                self._plot()
            sample = self._sample() if self.step > 0 else None
            if sample is not None:
                record["sample"] = sample
            train_txt = f"{record['train_loss']:.4f}" if record["train_loss"] is not None else "  -   "
            msg = (f"step {self.step:>6}  tokens {self.tokens:>12,}  train {train_txt}  "
                   f"val {val_loss:.4f}  ppl {record['val_ppl']:.1f}")
            self._say(bar, msg)
            if sample is not None:
                self._say(bar, "  sample: " + sample.replace("\n", "\n          ")[:600])
        if save:
            self._save(val_loss)
        self._eval_seconds = time.perf_counter() - began
        stop = bool(on_eval(record)) if on_eval is not None and self.info.is_main else False
        return broadcast_flag(stop, self.info, self.device)

    def _plot(self) -> None:
        """Redraw ``loss.png`` from every record so far, and set how long to wait before the next one."""
        began = time.perf_counter()
        plot_curves(self.metrics.read(), self.run_dir / "loss.png", title=f"{self.run_dir.name}: loss")
        self._plotted_at = time.perf_counter()
        self._plot_wait = max(PLOT_INTERVAL_S, PLOT_COST_RATIO * (self._plotted_at - began))
        self._plot_pending = False

    def _say(self, bar, msg: str) -> None:
        """Log ``msg`` through the run's logger (stdout, or stderr under --json) without tearing the bar."""
        if bar is None:
            self.log(msg)
            return
        with bar.external_write_mode(file=sys.stderr):
            self.log(msg)

    def _mfu(self) -> float | None:
        """Model FLOPs utilisation: achieved training FLOP/s over the hardware's matmul peak.

        GPUs use their datasheet peak; on a CPU the peak is measured (a large matmul in the run's
        precision), so CPU MFU says how close the run came to what this CPU's matmuls can do.
        """
        if self.elapsed <= 0:
            return None
        peak = peak_flops(self.device, self.use_bf16)
        if not peak:
            return None
        achieved = flops_per_token(self.model_cfg, self.block) * self.tokens / self.elapsed
        return achieved / (peak * self.info.world_size)


def pretrain(
    cfg: TrainConfig,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    on_eval: Callable[[dict], bool | None] | None = None,
    log: Callable[[str], None] = print,
    task: TrainTask | Callable[[Path], TrainTask] | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Run (or resume) pretraining as ``cfg`` says; returns where the run is and how it ended.

    ``on_eval`` receives each evaluation record (step, tokens, elapsed, losses, lr); returning True
    stops the run after that evaluation (used by benchmarks that stop at a target loss).
    ``task`` makes it a fine-tuning run (:class:`gptlab.train.task.TrainTask`): the task's model and
    batches replace the corpus and the fresh model; ``cfg``'s data, tokenizer and model fields are unused.
    ``task`` may also be a function of the run folder that builds the task once the folder is claimed
    (a task that writes files there, such as its data splits). A new run refuses a non-empty ``cfg.out`` unless ``overwrite`` (then it replaces a previous run there).
    """
    cfg.validate()
    if resume is not None:
        if task is not None and not isinstance(task, TrainTask):
            task = task(Path(resume))
        run = TrainingRun(cfg, Path(resume), True, progress, log, task)
        return run.run(on_eval)
    cfg.with_default_stop()
    if task is None:
        check_settings(cfg)  # seconds, not after minutes of data preparation
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        out = OutDir(run_dir, overwrite=overwrite, kind="pretraining run", is_same_kind=is_run_dir,
                     hint=f" (to continue that run: --resume {run_dir})")
        claim = out.claim()
    else:  # torchrun: rank 0 owns the folder; the others write only what rank 0 tells them to
        claim = nullcontext(run_dir)
    with claim:
        # Setting up (data preparation, tokenizer training, the model) either completes or leaves no
        # folder behind; from the first step on, the run folder is the user's and is kept whatever happens.
        if task is not None and not isinstance(task, TrainTask):
            task = task(run_dir)
        run = TrainingRun(cfg, run_dir, False, progress, log, task)
    return run.run(on_eval)
