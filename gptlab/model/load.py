"""Turn what a user names on the command line into a model and the tokenizer that goes with it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.model.config import PRESETS, GPTConfig
from gptlab.model.gpt import GPT
from gptlab.model.hf import read_config, resolve_model_dir
from gptlab.model.hub import HUB_MODELS
from gptlab.model.run_folder import is_run_dir, load_run
from gptlab.tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer


def load_model(
    spec: str | os.PathLike, dtype: torch.dtype | None = None, seed: int = 0
) -> tuple[GPT, Tokenizer]:
    """``(model, tokenizer)`` from a run folder, a Hugging Face model folder, a hub name, or a preset name.

    Order: a folder written by ``gptlab pretrain`` (its best checkpoint and its own tokenizer); another
    existing folder (its exported tokenizer, else GPT-2's); a hub name (``gpt2``, ``qwen3-0.6b``, ...:
    pretrained weights, downloaded into the cache once); another preset name (``gpt-nano`` ...: randomly
    initialised from ``seed``, useful to try the pipeline). Both are worked out here, once, so that every
    caller pairs a model with the same tokenizer. The model is returned in eval mode.
    """
    path = Path(spec).expanduser()
    name = str(spec)
    if is_run_dir(path):  # a folder written by gptlab pretrain: its best checkpoint
        model, tok = load_run(path, "best", dtype=dtype)
    elif path.is_dir() or name in HUB_MODELS:
        directory = resolve_model_dir(spec)  # a hub name is downloaded into the cache here, once
        tok = _folder_tokenizer(directory, read_config(directory))
        model = GPT.from_pretrained(directory, dtype=dtype)
    elif name in PRESETS:
        print(f"gptlab: note: {name!r} is a preset; its weights are random (seed {seed})", file=sys.stderr)
        torch.manual_seed(seed)
        model = GPT(PRESETS[name])
        model = (model.to(dtype) if dtype else model).eval()
        tok = gpt2_tokenizer()  # the presets keep GPT-2's vocabulary
    else:
        raise GptlabError(
            f"--model {name!r}: not a model folder, nor a hub name ({', '.join(HUB_MODELS)}), "
            f"nor a preset ({', '.join(PRESETS)})"
        )
    if tok.n_vocab > model.cfg.vocab_size:
        raise GptlabError(
            f"tokenizer has {tok.n_vocab} ids but the model's vocab_size is {model.cfg.vocab_size}"
        )
    return model, tok


# Where `gptlab export` puts a run's own tokenizer (gptlab's format, so not under Hugging Face's name).
EXPORTED_TOKENIZER = "gptlab-tokenizer.json"


def _folder_tokenizer(path: Path, cfg: GPTConfig) -> Tokenizer:
    """An exported folder's own tokenizer; a gptlab ``tokenizer.json`` (older exports); else GPT-2's.

    A Llama/Qwen folder that brings a Hugging Face ``tokenizer.json`` is refused rather than paired
    with GPT-2's tokenizer, whose ids would mean other tokens in that model's vocabulary.
    """
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
        if cfg.family != "gpt2":
            raise GptlabError(
                f"{path}: this {cfg.family}-family model brings a Hugging Face tokenizer.json, which gptlab "
                "cannot read yet (only its own tokenizers and GPT-2's); its ids would be wrong with GPT-2's"
            )
    return gpt2_tokenizer()  # a Hugging Face GPT-2 folder (its tokenizer.json is GPT-2's BPE)
