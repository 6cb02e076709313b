"""Reading a run folder back: its config, tokenizer, checkpoints and model.

A run folder is what ``gptlab pretrain`` (or fine-tuning on its trainer) writes:

    RUN/config.json                     format, the train settings, the model's GPTConfig, the tokenizer
                                        reference, the world size, and a fine-tuning task's section
    RUN/tokenizer.json                  the tokenizer, unless config.json names GPT-2's
    RUN/checkpoints/step-NNNNNNNN/      model.safetensors, state.pt, meta.json (the last N steps)
    RUN/checkpoints/best/               a copy of the checkpoint with the lowest validation loss

This module is the only code that reads or checks those files. It sits in the model layer, below the
trainer that writes them (:mod:`gptlab.train.trainer`, :mod:`gptlab.train.checkpoint`), so that
loading a model, exporting it or serving it never imports the training loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from gptlab.errors import GptlabError
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT
from gptlab.outdir import RUN_FORMAT, is_run_dir
from gptlab.tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer


__all__ = [
    "CheckpointInfo", "RunConfig", "CONFIG_FILE", "CHECKPOINTS", "STEP_PREFIX", "is_run_dir", "read_run_config",
    "run_model_config", "load_run_tokenizer", "list_checkpoints", "latest_checkpoint", "checkpoint_dir",
    "load_model_weights", "load_state", "load_run",
]

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
# Step checkpoints are named STEP_PREFIX + the step, zero-padded (the writer, gptlab.train.checkpoint,
# uses the same prefix), so that a name sorts like its step and temporary folders never match.
STEP_PREFIX = "step-"


# --------------------------------------------------------------------------- config.json


@dataclass(frozen=True)
class RunConfig:
    """A run's ``config.json``, read and checked: each section in the form its users need."""

    path: Path  # the config.json itself, for messages
    train: dict[str, Any]  # the effective TrainConfig as a dict (gptlab.train.config turns it back into one)
    model: GPTConfig
    tokenizer: dict[str, Any]  # {"file": "tokenizer.json"} or {"name": "gpt2"}
    world_size: int  # how many processes trained it (a resume on another count changes the data order)
    task: dict[str, Any] | None  # a fine-tuning task's section ({"name": ..., ...}); None for pretraining


def read_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """Read ``RUN/config.json`` and check that it is a gptlab run's, with every section well formed.

    Raises :class:`GptlabError` (one line, naming the folder or file) when there is no config.json, when
    it belongs to something else (e.g. a Hugging Face folder), or when a section is damaged.
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise GptlabError(f"{run_dir}: not a gptlab run folder (no {CONFIG_FILE})")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GptlabError(f"{path}: corrupt run config ({type(exc).__name__}: {exc})") from None
    if not isinstance(saved, dict) or saved.get("format") != RUN_FORMAT:
        raise GptlabError(f"{run_dir}: not a gptlab run folder (no {CONFIG_FILE} with format {RUN_FORMAT})")
    try:
        train, tokenizer, task = saved["train"], saved.get("tokenizer", {}), saved.get("task")
        if not isinstance(train, dict):
            raise TypeError(f"'train' is a {type(train).__name__}, not an object")
        if not isinstance(tokenizer, dict):
            raise TypeError(f"'tokenizer' is a {type(tokenizer).__name__}, not an object")
        if task is not None and not isinstance(task, dict):
            raise TypeError(f"'task' is a {type(task).__name__}, not an object")
        model = GPTConfig.from_dict(saved["model"])
        world_size = int(saved.get("world_size", 1))
    except (KeyError, TypeError, ValueError, GptlabError) as exc:
        raise GptlabError(f"{path}: corrupt run config ({type(exc).__name__}: {exc})") from None
    return RunConfig(path, train, model, tokenizer, world_size, task)


def run_model_config(run_dir: str | os.PathLike) -> GPTConfig:
    """The :class:`GPTConfig` a run folder's model was built with."""
    return read_run_config(run_dir).model


def load_run_tokenizer(run_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer a run was trained with (its ``tokenizer.json``, or GPT-2's)."""
    return _tokenizer(run_dir, read_run_config(run_dir))


def _tokenizer(run_dir: str | os.PathLike, run: RunConfig) -> Tokenizer:
    ref = run.tokenizer
    return load_tokenizer(Path(run_dir) / ref["file"]) if "file" in ref else gpt2_tokenizer()


# --------------------------------------------------------------------------- checkpoints


@dataclass
class CheckpointInfo:
    """Where a checkpoint is and what its meta.json says."""

    path: Path
    step: int
    val_loss: float | None


def list_checkpoints(run_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """The run's complete step checkpoints, oldest first (temporary and set-aside folders are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if d.name.startswith(STEP_PREFIX) and (d / "meta.json").is_file():
            try:
                meta = json.loads((d / "meta.json").read_text())
            except ValueError:
                continue  # being written, or damaged: not a complete checkpoint
            out.append(CheckpointInfo(d, int(meta["step"]), meta.get("val_loss")))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    """The newest complete checkpoint of a run, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def checkpoint_dir(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint folder to use: ``best`` (lowest validation loss, else the latest), ``latest``, or a step number."""
    run_dir = Path(run_dir)
    best = run_dir / CHECKPOINTS / "best"
    if which == "best" and (best / "model.safetensors").is_file():
        return best
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


def load_model_weights(model: torch.nn.Module, ckpt_dir: str | os.PathLike) -> None:
    """Load ``model.safetensors`` from a checkpoint folder into ``model`` (shapes must match)."""
    path = Path(ckpt_dir) / "model.safetensors"
    if not path.is_file():
        raise GptlabError(f"{path}: missing (the checkpoint has no weights file)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) for a damaged file
        raise GptlabError(f"{path}: cannot read weights, the file is damaged or truncated ({exc})") from None
    own = model.state_dict()
    for name, t in tensors.items():
        if name in own and own[name].shape != t.shape:
            raise GptlabError(f"{path}: tensor {name} has shape {tuple(t.shape)}, the model expects {tuple(own[name].shape)}")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not _is_tied_or_buffer(model, m)]
    if missing or unexpected:
        raise GptlabError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _is_tied_or_buffer(model: torch.nn.Module, name: str) -> bool:
    """Whether ``name`` may be absent from a checkpoint: a recomputed buffer, or a weight tied to a saved one."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return True  # a buffer that is recomputed, not saved
    ptr = params[name].untyped_storage().data_ptr()
    return any(p.untyped_storage().data_ptr() == ptr and n != name for n, p in params.items())


def load_state(ckpt_dir: str | os.PathLike) -> dict:
    """The training state saved beside the weights (never unpickles code: ``weights_only=True``)."""
    path = Path(ckpt_dir) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, an unpickling refusal, ...: all mean "unreadable"
        raise GptlabError(f"{path}: cannot read training state ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None


# --------------------------------------------------------------------------- the model


def load_run(
    run_dir: str | os.PathLike, which: str = "best", dtype: torch.dtype | None = None
) -> tuple[GPT, Tokenizer]:
    """``(model, tokenizer)`` from a run folder, the model in eval mode on the CPU.

    ``which`` picks the checkpoint (see :func:`checkpoint_dir`); ``dtype`` converts the weights.
    """
    run = read_run_config(run_dir)
    model = GPT(run.model)
    load_model_weights(model, checkpoint_dir(run_dir, which))
    tokenizer = _tokenizer(run_dir, run)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), tokenizer
