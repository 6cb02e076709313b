"""The ``gptlab`` command: a thin layer of argument parsing over the library.

Each verb lives in its own module with a ``register(subparsers)`` function; this module only builds
the parser, dispatches, and turns a :class:`gptlab.errors.GptlabError` into one line on stderr and
exit code 2 (argparse uses 2 for bad flags too).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gptlab.errors import GptlabError

# Modules that contribute verbs, in the order of the pipeline (their --help order).
_VERB_MODULES = [
    "gptlab.cli.tokenizer_cmds",
    "gptlab.cli.data_cmds",
    "gptlab.cli.model_cmds",
    "gptlab.cli.train_cmds",
    "gptlab.cli.classify_cmds",
    "gptlab.cli.instruct_cmds",
    "gptlab.cli.serve_cmds",
    "gptlab.cli.bench_cmds",
]


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``gptlab`` argument parser with every verb registered."""
    parser = argparse.ArgumentParser(
        prog="gptlab",
        description="Build GPT-style language models from scratch: tokenize, prepare data, "
        "build and run models, benchmark.",
    )
    from gptlab import __version__

    parser.add_argument("--version", action="version", version=f"gptlab {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in _VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a stage not written yet must not break the others
            if exc.name == name:
                continue
            raise
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
