"""``gptlab chat`` keeps the conversation within the context: the oldest turns go first."""

from __future__ import annotations

from gptlab.cli.serve_cmds import _fit_history
from gptlab.data.chat_format import PlainChat


class _CharTokens:
    """One token per character, so prompt lengths are easy to count."""

    def encode(self, text: str, disallowed_special=()) -> list[int]:  # noqa: ANN001, ARG002
        return [ord(c) for c in text]


def _chat(*turns: str) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def test_a_chat_that_fits_is_kept_whole():
    messages = _chat("Hi", "Hello!", "Why?")
    prompt = PlainChat().format_chat(messages)
    ids, max_tokens, dropped = _fit_history(messages, PlainChat(), _CharTokens(), len(prompt) + 10, 10)
    assert (len(ids), max_tokens, dropped) == (len(prompt), 10, 0)  # exactly the context: fits
    assert len(messages) == 3


def test_the_oldest_turn_is_dropped_until_prompt_and_answer_fit():
    messages = _chat("Hi", "Hello!", "Why?")
    shorter = PlainChat().format_chat(messages[2:])
    ids, max_tokens, dropped = _fit_history(messages, PlainChat(), _CharTokens(), len(shorter) + 10, 10)
    assert (len(ids), max_tokens, dropped) == (len(shorter), 10, 1)
    assert messages == _chat("Why?")


def test_a_lone_message_too_long_gets_a_shorter_answer_or_none():
    prompt = PlainChat().format_chat(_chat("Why?"))
    assert _fit_history(_chat("Why?"), PlainChat(), _CharTokens(), len(prompt) + 3, 10)[1:] == (3, 0)
    assert _fit_history(_chat("Why?"), PlainChat(), _CharTokens(), len(prompt) - 1, 10)[1:] == (0, 0)
