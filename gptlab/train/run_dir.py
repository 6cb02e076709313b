"""Reading a finished (or running) pretraining run folder back: its model, tokenizer and metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.outdir import is_run_dir  # noqa: F401 - re-exported: the run folder's readers live here


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


def run_model_config(run_dir: str | os.PathLike):
    """The :class:`gptlab.model.GPTConfig` a run folder's model was built with."""
    from gptlab.model import GPTConfig

    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return GPTConfig.from_dict(saved["model"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GptlabError(f"{path}: corrupt run config ({type(exc).__name__}: {exc})") from None


def load_run(run_dir: str | os.PathLike, which: str = "best", dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` from a run folder, the model in eval mode on the CPU."""
    from gptlab.model import GPT
    from gptlab.train.checkpoint import load_model_weights

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise GptlabError(f"{run_dir}: not a gptlab run folder (no config.json with format gptlab-run)")
    model = GPT(run_model_config(run_dir))
    load_model_weights(model, checkpoint_dir(run_dir, which))
    tokenizer = load_run_tokenizer(run_dir)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), tokenizer
