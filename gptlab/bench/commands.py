"""``gptlab bench TARGET``: speed of gptlab against reference libraries.

A target is a module with a ``register_target(sub)`` function that adds ``gptlab bench TARGET`` to
``sub`` (an argparse sub-parsers object) and sets its handler; add a target by writing such a module
and listing it in ``_TARGETS``. A target may use its module docstring as its description:
reST markup in it is shown as plain text by ``--help`` (see :func:`plain_text`).
"""

from __future__ import annotations

import argparse
import re

from gptlab.bench import classify, instruct, model, prepare, pretrain, quant, serve, tokenizer

# Each target module adds `gptlab bench TARGET` (in this --help order).
_TARGETS = [tokenizer, prepare, model, quant, pretrain, classify, instruct, serve]


# ``code`` and :role:`target` (also :role:`~pkg.mod.name` and :role:`title <target>`), as docstrings write them.
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`([^`]+)`")


def _role_text(match: re.Match[str]) -> str:
    """What Sphinx shows for a role: the title if given, the last name after ``~``, else the target."""
    target = match.group(1)
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", target, re.DOTALL)
    if titled:
        return titled.group(1)
    if target.startswith("~"):
        return target[1:].rsplit(".", 1)[-1]
    return target


def plain_text(text: str | None) -> str | None:
    """``text`` (a docstring) with its reST inline markup turned into the plain text it stands for.

    ``--help`` prints descriptions as they are, so markup meant for the API docs would show raw.
    """
    if not text:
        return text
    return _LITERAL.sub(r"\1", _ROLE.sub(_role_text, text))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` verb and one sub-verb per benchmark target."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark gptlab against reference libraries",
        description="Measure gptlab and a reference implementation in the same run (medians of "
        "interleaved repeats) and print both, their ratio and the target.",
    )
    sub = parser.add_subparsers(dest="target", metavar="TARGET")
    for module in _TARGETS:
        module.register_target(sub)
    for target in sub.choices.values():
        target.description = plain_text(target.description)
        target.epilog = plain_text(target.epilog)

    def no_target(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=no_target)
