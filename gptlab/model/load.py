"""Turn what a user names on the command line into a model (and the tokenizer that goes with it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.model.config import PRESETS
from gptlab.model.gpt import GPT
from gptlab.model.hub import HUB_MODELS
from gptlab.tokenizer import Tokenizer, get_tokenizer, load_tokenizer


def load_model(spec: str | os.PathLike, dtype: torch.dtype | None = None, seed: int = 0) -> GPT:
    """A model from a run folder, a Hugging Face GPT-2 folder, a hub name, or a preset name.

    Order: a folder written by ``gptlab pretrain`` (its best checkpoint); another existing folder; a hub name (``gpt2`` ... ``gpt2-xl``: pretrained weights, downloaded
    into the cache once); another preset name (``gpt-nano`` ...: randomly initialised from ``seed``,
    useful to try the pipeline). The model is returned in eval mode.
    """
    path = Path(spec).expanduser()
    name = str(spec)
    from gptlab.train.run_dir import is_run_dir, load_run

    if is_run_dir(path):  # a folder written by gptlab pretrain: its best checkpoint
        return load_run(path, "best", dtype=dtype)[0]
    if path.is_dir() or name in HUB_MODELS:
        return GPT.from_pretrained(spec, dtype=dtype)
    if name in PRESETS:
        print(f"gptlab: note: {name!r} is a preset; its weights are random (seed {seed})", file=sys.stderr)
        torch.manual_seed(seed)
        model = GPT(PRESETS[name])
        return (model.to(dtype) if dtype else model).eval()
    raise GptlabError(
        f"--model {name!r}: not a model folder, nor a hub name ({', '.join(HUB_MODELS)}), "
        f"nor a preset ({', '.join(PRESETS)})"
    )


# Where `gptlab export` puts a run's own tokenizer (gptlab's format, so not under Hugging Face's name).
EXPORTED_TOKENIZER = "gptlab-tokenizer.json"


def _folder_tokenizer(path: Path) -> Tokenizer:
    """An exported folder's own tokenizer; a gptlab ``tokenizer.json`` (older exports); else GPT-2's."""
    if (path / EXPORTED_TOKENIZER).is_file():
        return load_tokenizer(path / EXPORTED_TOKENIZER)
    legacy = path / "tokenizer.json"
    if legacy.is_file():
        try:
            is_ours = json.loads(legacy.read_bytes()).get("format") == "gptlab-tokenizer"
        except (ValueError, AttributeError):
            is_ours = False
        if is_ours:
            return load_tokenizer(legacy)
    return get_tokenizer("gpt2")  # a Hugging Face GPT-2 folder (its tokenizer.json is GPT-2's BPE)


def tokenizer_for(spec: str | os.PathLike, model: GPT) -> Tokenizer:
    """The tokenizer that goes with ``spec``: a run's, an exported folder's own, or GPT-2's."""
    path = Path(spec).expanduser()
    from gptlab.train.run_dir import is_run_dir, load_run_tokenizer

    if is_run_dir(path):
        tok = load_run_tokenizer(path)
    elif path.is_dir():
        tok = _folder_tokenizer(path)
    else:
        tok = get_tokenizer("gpt2")
    if tok.n_vocab > model.cfg.vocab_size:
        raise GptlabError(
            f"tokenizer has {tok.n_vocab} ids but the model's vocab_size is {model.cfg.vocab_size}"
        )
    return tok
