"""``gptlab bench TARGET --help``: descriptions taken from docstrings are shown as plain text."""

from __future__ import annotations

import pytest

from gptlab.app import main
from gptlab.bench.commands import plain_text


@pytest.mark.parametrize("text, expected", [
    ("run ``gptlab bench pretrain`` now", "run gptlab bench pretrain now"),
    ("see :mod:`gptlab.bench.nanogpt_recipe`", "see gptlab.bench.nanogpt_recipe"),
    ("calls :func:`~gptlab.model.generate.stream_generate`", "calls stream_generate"),
    ("a :class:`model <gptlab.model.GPT>` and :py:meth:`GPT.generate`", "a model and GPT.generate"),
    ("``--judge-url``/``--judge-model``", "--judge-url/--judge-model"),
    ("a literal that\n``wraps a\nline``", "a literal that\nwraps a\nline"),
    ("98.0% and 10% stay", "98.0% and 10% stay"),
    (None, None),
])
def test_plain_text(text, expected):
    assert plain_text(text) == expected


@pytest.mark.parametrize("target, shown", [
    ("pretrain", "nanoGPT's CPU recipe (gptlab.bench.nanogpt_recipe)"),
    ("instruct", "gptlab bench instruct: the book's chapter 7 pipeline"),
    ("classify", "mean accuracy >= 98.0%, each run"),
])
def test_target_help_reads_as_plain_text(capsys, target, shown):
    with pytest.raises(SystemExit) as info:
        main(["bench", target, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert shown in " ".join(out.split())  # argparse may wrap lines anywhere
