"""``--help`` of every verb and sub-verb of the whole CLI: it works, and reads as plain text."""

from __future__ import annotations

import argparse

import pytest

from gptlab.app import build_parser, main

# What --help must never show: an unformatted percent escape, or reST markup copied from a docstring.
_RAW = ("%%", "``", ":func:", ":class:", ":mod:", ":meth:", ":attr:", ":data:")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under ``parser`` (the root is ``()``), depth first, each parser once."""
    found = [path]
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # an alias shares its parser
                    seen.add(id(sub))
                    found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def test_the_walk_finds_nested_verbs():
    assert ("generate",) in COMMANDS and ("instruct", "generate") in COMMANDS
    assert {("bench", t) for t in ("classify", "pretrain", "instruct")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "gptlab")
def test_help_works_and_is_plain_text(capsys, path):
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    out, err = capsys.readouterr()
    assert info.value.code == 0 and err == ""
    assert out.startswith("usage: " + " ".join(("gptlab", *path)))
    raw = [marker for marker in _RAW if marker in out]
    assert not raw, f"gptlab {' '.join(path)} --help shows {raw}:\n{out}"
