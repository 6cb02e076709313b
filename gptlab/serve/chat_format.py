"""Chat messages to a prompt: the model's own prompt style when it has one, a plain format otherwise.

A fine-tuned model folder carries ``prompt_style.json`` (:mod:`gptlab.data.prompts`); chats are
then formatted exactly as the model was trained. A model without one (a pretrained or base model) gets
a neutral transcript::

    System text (if any)

    User: first message
    Assistant: first answer
    User: second message
    Assistant:

whose answers end where the model starts a new ``User:`` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from gptlab.data.prompts import chat_messages, get_style, load_style


class ChatFormat(Protocol):
    """What serving needs of a prompt style: messages to a prompt, and the strings that end an answer."""

    name: str
    stop: tuple[str, ...]

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for ``messages``, ending where the assistant's answer starts."""
        ...


@dataclass(frozen=True)
class PlainChat:
    """The fallback "User:/Assistant:" transcript for models without a prompt style."""

    name: str = "plain"
    stop: tuple[str, ...] = ("\nUser:", "\nAssistant:")

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        """Format ``messages`` (``role`` system/user/assistant, string ``content``); the last must be the user's."""
        lines: list[str] = []
        for role, content in chat_messages(messages):
            if role == "system":
                lines.append(content.strip() + "\n")
            elif role == "user":
                lines.append(f"User: {content.strip()}")
            else:
                lines.append(f"Assistant: {content.strip()}")
        return "\n".join(lines) + "\nAssistant:"


def chat_format_for(model_dir: str | os.PathLike | None, style: str | None = None) -> ChatFormat:
    """The chat format for a model: ``style`` if given (a name or template), else the folder's saved style, else plain."""
    if style:
        return PlainChat() if style == "plain" else get_style(style)
    if model_dir is not None and os.path.isdir(model_dir):
        found = load_style(model_dir)
        if found is not None:
            return found
    return PlainChat()
