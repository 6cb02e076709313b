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
from gptlab.model.hub import HUB_MODELS, hub_repo
from gptlab.model.quantize import DEFAULT_GROUP_SIZE, check_mode, load_quantized, quantization_of, quantize_model
from gptlab.model.run_folder import is_run_dir, load_run
from gptlab.tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer


def load_model(
    spec: str | os.PathLike,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    quantize: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> tuple[GPT, Tokenizer]:
    """``(model, tokenizer)`` from a run folder, a GGUF file, a Hugging Face folder, a hub name, or a preset name.

    Order: a folder written by ``gptlab pretrain`` (its best checkpoint and its own tokenizer); a
    ``.gguf`` file (llama.cpp's format: its weights, Q4_0 linear layers kept as int4 and other quantized
    tensors dequantized, and its vocabulary); another
    existing folder (its exported tokenizer, else GPT-2's); a hub name (``gpt2``, ``qwen3-0.6b``, ...) or
    repository id (``Qwen/Qwen3-0.6B``): pretrained weights, downloaded into the hub cache once; another
    preset name (``gpt-nano`` ...: randomly initialised from ``seed``, useful to try the pipeline). Both
    are worked out here, once, so that every caller pairs a model with the same tokenizer. The model is
    returned in eval mode.

    ``quantize`` (``int8`` or ``int4``, in groups of ``group_size``) replaces the linear layers by
    weight-only quantized ones (:mod:`gptlab.model.quantize`); a folder written by ``gptlab quantize``
    loads quantized as it is.
    """
    path = Path(spec).expanduser()
    name = str(spec)
    if quantize is not None:
        check_mode(quantize, group_size)
    saved_quant = quantization_of(path) if path.is_dir() else None
    if saved_quant is not None:  # written by gptlab quantize: integer weights, read as they are
        if quantize is not None:
            raise GptlabError(f"--model {name}: already quantized ({saved_quant.get('mode')}); drop --quantize")
        model = load_quantized(path)
        tok = _folder_tokenizer(path, model.cfg)
    elif is_run_dir(path):  # a folder written by gptlab pretrain: its best checkpoint
        model, tok = load_run(path, "best", dtype=dtype)
    elif path.suffix.lower() == ".gguf" and path.is_file():  # llama.cpp's format: weights and vocabulary
        from gptlab.model.gguf_import import load_gguf  # imports the gguf package only when needed

        # Q4_0 layers stay int4 unless another quantization is asked for (then from the dequantized weights).
        model, tok = load_gguf(path, dtype=dtype, keep_int4=quantize is None)
    elif path.is_dir() or hub_repo(name) is not None:  # a hub name or an owner/name repository id
        directory = resolve_model_dir(spec)  # a hub model is downloaded into the hub cache here, once
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
            f"--model {name!r}: not a model folder or .gguf file, nor a hub name ({', '.join(HUB_MODELS)}) "
            "or repository id owner/name, "
            f"nor a preset ({', '.join(PRESETS)})"
        )
    if tok.n_vocab > model.cfg.vocab_size:
        raise GptlabError(
            f"tokenizer has {tok.n_vocab} ids but the model's vocab_size is {model.cfg.vocab_size}"
        )
    if quantize is not None:
        quantize_model(model, quantize, group_size)
    return model, tok


# Where older `gptlab export`s put a run's own tokenizer, in gptlab's format (read for compatibility;
# exports now write Hugging Face's tokenizer.json + tokenizer_config.json, or this for char/word ones).
EXPORTED_TOKENIZER = "gptlab-tokenizer.json"


def _folder_tokenizer(path: Path, cfg: GPTConfig) -> Tokenizer:
    """A model folder's own tokenizer: ``tokenizer.json`` (Hugging Face's or gptlab's, with
    ``tokenizer_config.json`` and ``generation_config.json`` beside it), an older export's
    ``gptlab-tokenizer.json``; GPT-2's for a GPT-2 folder that has none.

    A Llama/Qwen folder without a tokenizer is refused rather than paired with GPT-2's tokenizer,
    whose ids would mean other tokens in that model's vocabulary.
    """
    if (path / EXPORTED_TOKENIZER).is_file():
        tok = load_tokenizer(path / EXPORTED_TOKENIZER)
    elif (path / "tokenizer.json").is_file():
        tok = load_tokenizer(path / "tokenizer.json")
    elif cfg.family == "gpt2" or cfg.vocab_size == 50257:
        return gpt2_tokenizer()  # a Hugging Face GPT-2 folder saved without its tokenizer files
    else:
        raise GptlabError(
            f"{path}: this {cfg.family}-family model folder has no tokenizer.json; copy the model's tokenizer "
            "files (tokenizer.json, tokenizer_config.json) into it"
        )
    tok.end_ids = tuple(_generation_eos_ids(path))
    return tok


def save_folder_tokenizer(tokenizer: Tokenizer, directory: Path, context_length: int) -> None:
    """Write ``tokenizer`` into a model folder so that :func:`load_model` pairs them again.

    A BPE tokenizer becomes Hugging Face's ``tokenizer.json`` + ``tokenizer_config.json`` (chat template
    included), which ``transformers`` reads too. Character and word tokenizers have no Hugging Face
    equivalent: they go in gptlab's format under a name of their own, since Hugging Face tools read any
    ``tokenizer.json`` as theirs.
    """
    from gptlab.tokenizer import BPETokenizer
    from gptlab.tokenizer.hf_writer import save_pretrained_tokenizer

    if isinstance(tokenizer, BPETokenizer):
        save_pretrained_tokenizer(tokenizer, directory, model_max_length=context_length)
    else:
        tokenizer.save(Path(directory) / EXPORTED_TOKENIZER)


def _generation_eos_ids(path: Path) -> list[int]:
    """``eos_token_id`` of ``generation_config.json`` (an id or a list: Llama 3 Instruct ends turns
    with ``<|eot_id|>`` and ``<|eom_id|>`` besides its end of text); empty when absent or unreadable."""
    gen = path / "generation_config.json"
    if not gen.is_file():
        return []
    try:
        value = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value] if isinstance(value, list) else []
