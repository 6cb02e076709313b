"""Reading a finished (or running) pretraining run folder back: its model, tokenizer and metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gptlab.errors import GptlabError


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder written by ``gptlab pretrain``."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("format") == "gptlab-run"
    except (ValueError, OSError):
        return False


def checkpoint_dir(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint folder to use: ``best`` (lowest validation loss, else the latest), ``latest``, or a step number."""
    from gptlab.train.checkpoint import latest_checkpoint, list_checkpoints

    run_dir = Path(run_dir)
    if which == "best" and (run_dir / "checkpoints" / "best" / "model.safetensors").is_file():
        return run_dir / "checkpoints" / "best"
    if which in ("best", "latest"):
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise GptlabError(f"{run_dir}: the run has no checkpoint yet")
        return latest.path
    try:
        step = int(which)
    except ValueError:
        raise GptlabError(f"checkpoint {which!r}: expected best, latest or a step number") from None
    for c in list_checkpoints(run_dir):
        if c.step == step:
            return c.path
    raise GptlabError(f"{run_dir}: no checkpoint for step {step}")


def load_run_tokenizer(run_dir: str | os.PathLike):
    """The tokenizer a run was trained with (its tokenizer.json, or GPT-2's)."""
    from gptlab.tokenizer import gpt2_tokenizer, load_tokenizer

    run_dir = Path(run_dir)
    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    ref = saved.get("tokenizer", {})
    return load_tokenizer(run_dir / ref["file"]) if "file" in ref else gpt2_tokenizer()


def load_run(run_dir: str | os.PathLike, which: str = "best", dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` from a run folder, the model in eval mode on the CPU."""
    from gptlab.model import GPT, GPTConfig
    from gptlab.train.checkpoint import load_model_weights

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise GptlabError(f"{run_dir}: not a gptlab run folder (no config.json with format gptlab-run)")
    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    model = GPT(GPTConfig.from_dict(saved["model"]))
    load_model_weights(model, checkpoint_dir(run_dir, which))
    tokenizer = load_run_tokenizer(run_dir)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), tokenizer
