"""``gptlab bench TARGET``: speed of gptlab against reference libraries.

A target is a module with a ``register_target(sub)`` function that adds ``gptlab bench TARGET`` to
``sub`` (an argparse sub-parsers object) and sets its handler; add a target by writing such a module
and listing it in ``_TARGET_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib

_TARGET_MODULES = [
    "gptlab.bench.tokenizer",
    "gptlab.bench.prepare",
    "gptlab.bench.model",
    "gptlab.bench.pretrain",
    "gptlab.bench.classify",
    "gptlab.bench.instruct",
    "gptlab.bench.serve",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` verb and one sub-verb per benchmark target."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark gptlab against reference libraries",
        description="Measure gptlab and a reference implementation in the same run (medians of "
        "interleaved repeats) and print both, their ratio and the target.",
    )
    sub = parser.add_subparsers(dest="target", metavar="TARGET")
    for name in _TARGET_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a target not written yet must not break the others
            if exc.name == name:
                continue
            raise
        module.register_target(sub)

    def no_target(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=no_target)
