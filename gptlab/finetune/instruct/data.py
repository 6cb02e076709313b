"""Instruction data: JSON or JSONL files of ``{instruction, input, output}`` entries, checked and split.

Entries stay plain dictionaries, so any extra fields (an id, a ``model_response`` written by
``gptlab instruct generate``) travel through unchanged. ``input`` may be missing or empty.

A file may instead hold chat entries, the common chat data-set form:
``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}`` with at least one
assistant message. Those are rendered with the model's chat template and trained on the assistant
turns only (:func:`gptlab.finetune.instruct.collate.encode_chat_example`). One file holds one kind.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError

# The book's chapter 7 split: 85% train, 10% test, the rest (5%) validation, in that order.
BOOK_FRACTIONS = (0.85, 0.10)
SPLITS = ("train", "test", "val")
CHAT_ROLES = ("system", "user", "assistant")


def resolve_data(source: str | os.PathLike) -> Path:
    """The file behind ``source``: a registered data set name (e.g. ``instruction-data``) or a path."""
    from gptlab.data.registry import DATASETS, dataset_path

    name = str(source)
    if name in DATASETS:
        return dataset_path(name)
    path = Path(name).expanduser()
    if not path.is_file():
        raise GptlabError(
            f"--data {name!r}: no such file, and not a data set name (e.g. instruction-data)"
        )
    return path


def load_examples(source: str | os.PathLike, require_output: bool = True) -> list[dict[str, Any]]:
    """Read and check an instruction file (JSON list, or JSONL with one object per line).

    Every entry must be an object with a string ``instruction`` and (unless ``require_output`` is
    False) a string ``output``; ``input`` must be a string when present (missing means ""). Or every
    entry is a chat entry ``{messages: [...]}`` (:func:`check_chat_entry`). The first bad entry raises
    :class:`GptlabError` naming the file, the entry's index and the field.
    """
    path = resolve_data(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GptlabError(f"{path}: cannot read ({exc})") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        entries = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise GptlabError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
    else:
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GptlabError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); expected a list of "
                "{instruction, input, output} or {messages} objects (or a .jsonl file with one per line)"
            ) from None
        if not isinstance(entries, list):
            raise GptlabError(
                f"{path}: expected a JSON list of {{instruction, input, output}} or {{messages}} objects, "
                f"got a JSON {type(entries).__name__}"
            )
    check_examples(entries, str(path), require_output)
    return entries


def is_chat_entry(entry: Any) -> bool:
    """Whether ``entry`` is a chat entry (has a ``messages`` field) rather than an instruction entry."""
    return isinstance(entry, dict) and "messages" in entry


def reference_answer(entry: dict[str, Any]) -> str | None:
    """The answer ``entry`` expects: ``output``, or a chat entry's last assistant message; None if none."""
    if is_chat_entry(entry):
        answers = [m["content"] for m in entry["messages"] if m.get("role") == "assistant"]
        return answers[-1] if answers else None
    return entry.get("output")


def task_text(entry: dict[str, Any]) -> str:
    """What a chat entry asks, for a judge: its conversation before the last assistant message, one
    ``role: content`` line per message (all of it when there is no assistant message)."""
    messages = entry["messages"]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages[:last])


def is_chat_data(entries: list[Any]) -> bool:
    """Whether checked ``entries`` are chat entries (a file holds one kind, so the first decides)."""
    return bool(entries) and is_chat_entry(entries[0])


def check_examples(entries: list[Any], where: str, require_output: bool = True) -> None:
    """Raise :class:`GptlabError` for the first entry that is not a usable instruction (or chat) example.

    The first entry decides the kind: ``{instruction, input, output}`` or ``{messages}``
    (:func:`check_chat_entry`); an entry of the other kind is an error, so a file holds one kind.
    """
    if not entries:
        raise GptlabError(f"{where}: no entries")
    if is_chat_entry(entries[0]):
        for i, entry in enumerate(entries):
            check_chat_entry(entry, where, i, require_assistant=require_output)
        return
    required = ("instruction", "output") if require_output else ("instruction",)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise GptlabError(f"{where}: entry {i}: expected an object, got {type(entry).__name__}")
        if "messages" in entry:
            raise GptlabError(f"{where}: entry {i}: a chat entry (field 'messages') among instruction entries; "
                              "a file holds one kind")
        for name in required:
            if name not in entry:
                raise GptlabError(f"{where}: entry {i}: field {name!r} is missing")
        for name in ("instruction", "input", "output"):
            value = entry.get(name)
            if name in entry and not isinstance(value, str):
                if name == "output" and value is None and not require_output:
                    continue
                raise GptlabError(
                    f"{where}: entry {i}: field {name!r} must be a string, got {type(value).__name__}"
                )
        if not entry["instruction"].strip():
            raise GptlabError(f"{where}: entry {i}: field 'instruction' is empty")


def check_chat_entry(entry: Any, where: str, index: int, require_assistant: bool = True) -> None:
    """Raise :class:`GptlabError` unless ``entry`` is ``{"messages": [{"role": ..., "content": str}, ...]}``.

    Roles must be system, user or assistant and contents strings; with ``require_assistant`` (training
    data) at least one message must be the assistant's, since only assistant turns are learned.
    Other fields, in the entry or in a message, are allowed and ignored.
    """
    head = f"{where}: entry {index}"
    if not isinstance(entry, dict):
        raise GptlabError(f"{head}: expected an object, got {type(entry).__name__}")
    if "messages" not in entry:
        fields = ", ".join(repr(k) for k in entry) or "none"
        raise GptlabError(f"{head}: field 'messages' is missing (it has {fields}); a file holds one kind of entry")
    messages = entry["messages"]
    if not isinstance(messages, list):
        raise GptlabError(f"{head}: field 'messages' must be a list, got {type(messages).__name__}")
    if not messages:
        raise GptlabError(f"{head}: field 'messages' is empty")
    for j, message in enumerate(messages):
        field = f"messages[{j}]"
        if not isinstance(message, dict):
            raise GptlabError(f"{head}: field {field!r} must be an object, got {type(message).__name__}")
        for name in ("role", "content"):
            if name not in message:
                raise GptlabError(f"{head}: field '{field}.{name}' is missing")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise GptlabError(f"{head}: field '{field}.role' must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise GptlabError(f"{head}: field '{field}.content' must be a string, got {type(content).__name__}")
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise GptlabError(f"{head}: field 'messages' has no assistant message, so there is nothing to learn")


def split_examples(
    entries: list[dict[str, Any]],
    fractions: tuple[float, float] = BOOK_FRACTIONS,
    seed: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Split into ``train``, ``test``, ``val`` as the book does: the first 85%, the next 10%, the rest.

    ``seed=None`` keeps the file's order (the book's split: 935 / 110 / 55 of 1,100); a seed shuffles
    first, reproducibly. Sizes are ``int(n * fraction)`` for train and test, as in the book.
    """
    train_f, test_f = fractions
    if train_f <= 0 or test_f < 0 or train_f + test_f > 1:
        raise GptlabError(f"split fractions {fractions}: need train > 0, test >= 0, train + test <= 1")
    order = list(entries)
    if seed is not None:
        random.Random(seed).shuffle(order)
    n_train, n_test = int(len(order) * train_f), int(len(order) * test_f)
    return {
        "train": order[:n_train],
        "test": order[n_train : n_train + n_test],
        "val": order[n_train + n_test :],
    }
