"""``gptlab chat``: bad sampling flags are one line naming the flag, before the model loads."""

from __future__ import annotations

import pytest

from gptlab.app import main


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "-1", "--temperature must be in [0, 2], got -1.0"),
    ("--temperature", "nan", "--temperature must be in [0, 2], got nan"),
    ("--top-p", "0", "--top-p must be in (0, 1], got 0.0"),
    ("--top-p", "1.5", "--top-p must be in (0, 1], got 1.5"),
    ("--max-tokens", "-1", "--max-tokens must be >= 1, got -1"),
])
def test_chat_bad_sampling_flags_are_one_line(capsys, flag, value, message):
    # "no-such-model" would be an error of its own: the flags are checked first.
    assert main(["chat", "--model", "no-such-model", flag, value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"gptlab: error: {message}\n"
