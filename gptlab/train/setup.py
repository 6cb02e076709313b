"""Setting a pretraining run up: its effective config, a check of its settings, its data and tokenizer.

Everything the training loop (:mod:`gptlab.train.trainer`) needs before its first step, and nothing
it does after: merging the defaults, a config file and the command line (or a run's saved config on
resume), checking a preset and tokenizer before any data is read, preparing the corpus into the run
folder, and training a ``bpe:N`` tokenizer on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from gptlab.data.corpus import iter_documents
from gptlab.data.prep import prepare
from gptlab.data.prepared import PreparedData
from gptlab.errors import GptlabError
from gptlab.model.config import GPTConfig
from gptlab.model.run_folder import read_run_config
from gptlab.tokenizer import BPETokenizer
from gptlab.tokenizer.train import VocabTooLargeError
from gptlab.train.config import STOP_KEYS, TrainConfig, config_from_dict, load_config_file
from gptlab.train.distributed import DistInfo


# Settings that define *what* is trained; a resume must not change them (stop conditions, evaluation
# cadence and hardware may change).
IDENTITY_KEYS = (
    "data", "tokenizer", "max_chars", "val_fraction", "preset", "model", "batch_size", "block_size",
    "global_batch_tokens", "sampling", "stride", "lr", "min_lr", "warmup_steps", "weight_decay",
    "optimizer", "beta1", "beta2", "grad_clip", "seed",
)



def resolve_run_config(
    overrides: dict[str, Any], config_file: str | None = None, resume: str | None = None
) -> tuple[TrainConfig, Path | None]:
    """The effective config: defaults < config file < command-line overrides; or a run's saved config.

    With ``resume``, the saved config is the base and the overrides may only change stop conditions,
    evaluation cadence and hardware; changing what is trained raises :class:`GptlabError`.
    """
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
        config_from_dict(values, source=str(config_file))  # report unknown keys against the file
    values.update({k: v for k, v in overrides.items() if v is not None})
    if resume is None:
        cfg = config_from_dict(values, source="command line").with_default_stop()
        cfg.validate()
        return cfg, None
    run_dir = Path(resume)
    try:
        saved = read_run_config(run_dir)
    except GptlabError as exc:
        raise GptlabError(f"{exc}; cannot resume") from None
    # A run saved before the optimizer was a setting trained with AdamW.
    cfg = config_from_dict({"optimizer": "adamw", **saved.train}, source=str(saved.path))
    if any(values.get(k) for k in STOP_KEYS):
        # New stop conditions replace the saved ones: `--resume RUN --max-steps 800` must not still stop
        # at the first run's time budget. Every stop condition counts over the whole run.
        for key in STOP_KEYS:
            setattr(cfg, key, getattr(TrainConfig(), key))
    for key, value in values.items():
        if key in IDENTITY_KEYS and value != getattr(cfg, key):
            raise GptlabError(
                f"cannot resume {run_dir}: it was trained with {key}={getattr(cfg, key)!r}, "
                f"this command asks for {key}={value!r} (start a new run, or drop that setting)"
            )
        setattr(cfg, key, config_from_dict({key: value}).__dict__[key])
    cfg.out = str(run_dir)
    cfg.validate()
    return cfg, run_dir


# --------------------------------------------------------------------------- data


def default_run_dir(cfg: TrainConfig) -> Path:
    stem = Path(cfg.data).stem if cfg.data else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_data(cfg: TrainConfig, run_dir: Path, info: DistInfo, log: Callable[[str], None]) -> PreparedData:
    """A :class:`PreparedData` for the run: the given prepared folder, or RUN/data prepared once."""
    source = Path(cfg.data)
    if (source / "meta.json").is_file():
        return PreparedData(source)
    data_dir = run_dir / "data"
    if info.is_main and not (data_dir / "meta.json").is_file():
        tokenizer = build_tokenizer(cfg, run_dir, log)
        log(f"preparing {cfg.data} -> {data_dir}")
        prepare(
            cfg.data,
            data_dir,
            tokenizer=tokenizer,
            val_fraction=cfg.val_fraction,
            max_bytes=cfg.max_chars or None,
            progress=False,
        )
    if info.enabled:
        torch.distributed.barrier()
    return PreparedData(data_dir)


def build_tokenizer(cfg: TrainConfig, run_dir: Path, log: Callable[[str], None]):
    """The tokenizer spec as prepare() takes it; ``bpe:N`` trains one on the training text first."""
    spec = cfg.tokenizer
    if not spec.startswith("bpe:"):
        return spec
    vocab_size = _bpe_size(spec)

    # Train on the part of the text that becomes training data (the last val_fraction is held out).
    docs = list(iter_documents(cfg.data, max_bytes=cfg.max_chars or None))
    total = sum(len(d) for d in docs)
    keep, budget = [], int(total * (1 - cfg.val_fraction))
    for d in docs:
        if budget <= 0:
            break
        keep.append(d[:budget])
        budget -= len(d)
    t0 = time.perf_counter()
    try:
        tok = BPETokenizer.train(keep, vocab_size, name=f"bpe-{vocab_size}")
    except VocabTooLargeError as exc:
        # A small corpus (the-verdict: 20 kB) cannot fill the default 4,096 tokens: fit the vocabulary
        # to the data rather than stop, and say so.
        log(f"note: {cfg.data} has too few repeated pairs for {spec}; training bpe:{exc.reachable} instead "
            f"(the most it can make; pass --tokenizer bpe:N with a smaller N, or char, to choose)")
        tok = BPETokenizer.train(keep, exc.reachable, name=f"bpe-{exc.reachable}")
    log(f"trained a {tok.n_vocab}-token BPE tokenizer on {total / 1e6:.1f} MB in {time.perf_counter() - t0:.1f}s")
    return tok


# --------------------------------------------------------------------------- the run


def check_settings(cfg: TrainConfig) -> None:
    """Raise :class:`GptlabError` for a model preset, model override, tokenizer or block size that cannot work.

    Everything here is known before the data is read, so a typo fails at once.
    """
    model_cfg = GPTConfig.from_preset(cfg.preset, **cfg.model)
    if cfg.block_size > model_cfg.context_length:
        raise GptlabError(f"block_size {cfg.block_size} exceeds the model's context_length {model_cfg.context_length}")
    spec = cfg.tokenizer
    if spec.startswith("bpe:"):
        _bpe_size(spec)
    elif spec not in ("gpt2", "char") and not Path(spec).is_file():
        raise GptlabError(f"tokenizer {spec!r}: expected gpt2, char, bpe:N or a tokenizer file")


def _bpe_size(spec: str) -> int:
    try:
        vocab_size = int(spec.split(":", 1)[1])
    except ValueError:
        vocab_size = 0
    if vocab_size < 257:
        raise GptlabError(f"tokenizer {spec!r}: expected bpe:N with N > 256 the vocabulary size, e.g. bpe:4096")
    return vocab_size
