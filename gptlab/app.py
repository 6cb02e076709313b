"""The ``gptlab`` command: builds the parser from every stage's verbs and runs one.

This module sits above everything else (the layers below it never import it): each group of verbs
lives with its stage's command-line module (``gptlab.cli.*``, and ``gptlab.bench.commands`` for
``gptlab bench``) and contributes a ``register(subparsers)`` function. Here a
:class:`gptlab.errors.GptlabError` becomes one line on stderr and exit code 2 (argparse uses 2 for bad
flags too), and Ctrl-C exit code 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gptlab import __version__
from gptlab.bench import commands as bench_commands
from gptlab.cli import (
    classify_cmds,
    data_cmds,
    eval_cmds,
    instruct_cmds,
    model_cmds,
    quantize_cmds,
    serve_cmds,
    tokenizer_cmds,
    train_cmds,
)
from gptlab.errors import GptlabError

# In the order of the pipeline (their --help order).
_VERB_MODULES = [tokenizer_cmds, data_cmds, model_cmds, train_cmds, classify_cmds, instruct_cmds, quantize_cmds,
                 serve_cmds, eval_cmds, bench_commands]


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``gptlab`` argument parser with every verb registered."""
    parser = argparse.ArgumentParser(
        prog="gptlab",
        description="Build GPT-style language models from scratch: tokenize, prepare data, "
        "build and run models, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"gptlab {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in _VERB_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gptlab`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except GptlabError as exc:
        print(f"gptlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
