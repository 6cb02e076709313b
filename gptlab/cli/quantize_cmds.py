"""``gptlab quantize``, and the ``--quantize`` and ``--compile`` flags every command that runs a model shares."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.model.compile_modes import COMPILE_MODES
from gptlab.model.quant_modes import DEFAULT_GROUP_SIZE, INT4_GROUP_SIZES, QUANT_MODES

# Files that say how to prompt a model and when it has finished: carried from the source folder so
# that the quantized one chats and stops alike.
_CARRIED_FILES = ("prompt_style.json", "chat_template.jinja", "generation_config.json")


def add_quantize_flags(p: argparse.ArgumentParser) -> None:
    """``--quantize int8|int4`` and ``--group-size`` (int4), for commands that load a model to run it."""
    p.add_argument("--quantize", choices=list(QUANT_MODES), default=None,
                   help="weight-only quantization of the linear layers: int8 (per output channel) or int4 "
                        "(groups of --group-size, with a zero point): faster decoding, a little less accuracy")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, choices=list(INT4_GROUP_SIZES),
                   help=f"int4 weights per scale and zero point (default {DEFAULT_GROUP_SIZE})")


def add_compile_flag(p: argparse.ArgumentParser, when: str) -> None:
    """``--compile [default|max-autotune]`` for commands that decode; ``when`` says when the compilation happens."""
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=list(COMPILE_MODES),
                   help=f"compile the decode step with torch.compile {when}: faster steps; the first start compiles "
                        "for half a minute or so, later ones reuse the cached code. 'max-autotune' compiles the "
                        "whole step ahead of time with the weights frozen and autotuned matrix products: the "
                        "fastest with --quantize int8; minutes on a first start, later starts load the package "
                        "kept on disk (a second or so)")


def quantize_options(args: argparse.Namespace) -> dict:
    """``load_model`` keyword arguments from :func:`add_quantize_flags`' flags."""
    return {"quantize": getattr(args, "quantize", None), "group_size": getattr(args, "group_size", DEFAULT_GROUP_SIZE)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quantize`` verb."""
    q = subparsers.add_parser(
        "quantize",
        help="save a model with int8 or int4 weights (loads fast, decodes faster)",
        description="Quantize a model's linear layers (weight-only: int8 per output channel, or int4 in groups "
        "with zero points) and save it as a folder that generate, chat, serve, instruct generate and "
        "--model load directly, quantized. The embedding, norms and biases stay in bf16.",
    )
    q.add_argument("model", help="a run folder, a Hugging Face folder, a hub name or a .gguf file")
    q.add_argument("--out", required=True, help="output folder to create; a non-empty one needs --overwrite")
    q.add_argument("--mode", choices=list(QUANT_MODES), default="int8", help="int8 (default) or int4")
    q.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, choices=list(INT4_GROUP_SIZES),
                   help=f"int4 weights per scale and zero point (default {DEFAULT_GROUP_SIZE})")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier quantized folder in --out")
    q.add_argument("--json", action="store_true", help="print sizes as JSON")
    q.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    """Handler of ``gptlab quantize``."""
    import json

    from gptlab.model.load import load_model, save_folder_tokenizer
    from gptlab.model.quantize import quantization_of, quantize_model, quantized_bytes, save_quantized
    from gptlab.outdir import StagedOutDir, is_run_dir

    source = Path(args.model).expanduser()
    if source.exists() and Path(args.out).expanduser().resolve() == source.resolve():
        raise GptlabError("--out must be a new folder, not the model itself")
    out = StagedOutDir(args.out, overwrite=args.overwrite, kind="quantized model folder",
                       is_same_kind=lambda p: quantization_of(p) is not None and not is_run_dir(p))
    model, tokenizer = load_model(args.model)
    before = quantized_bytes(model)
    quantize_model(model, args.mode, args.group_size)
    after = quantized_bytes(model)
    with out.claim() as work:
        save_quantized(model, work)
        save_folder_tokenizer(tokenizer, work, model.cfg.context_length)
        if source.is_dir():
            for name in _CARRIED_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, work / name)
    report = {"out": str(out.path), "mode": args.mode,
              "group_size": args.group_size if args.mode == "int4" else None,
              "bytes_before": before, "bytes_after": after}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        extra = f", groups of {args.group_size}" if args.mode == "int4" else ""
        print(f"wrote {out.path}: {args.mode}{extra}, {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB of weights")
    return 0
