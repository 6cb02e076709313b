"""Instruction data: JSON or JSONL files of ``{instruction, input, output}`` entries, checked and split.

Entries stay plain dictionaries, so any extra fields (an id, a ``model_response`` written by
``gptlab instruct generate``) travel through unchanged. ``input`` may be missing or empty.
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
    False) a string ``output``; ``input`` must be a string when present (missing means ""). The first
    bad entry raises :class:`GptlabError` naming the file, the entry's index and the field.
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
                "{instruction, input, output} objects (or a .jsonl file with one per line)"
            ) from None
        if not isinstance(entries, list):
            raise GptlabError(
                f"{path}: expected a JSON list of {{instruction, input, output}} objects, "
                f"got a JSON {type(entries).__name__}"
            )
    check_examples(entries, str(path), require_output)
    return entries


def check_examples(entries: list[Any], where: str, require_output: bool = True) -> None:
    """Raise :class:`GptlabError` for the first entry that is not a usable instruction example."""
    if not entries:
        raise GptlabError(f"{where}: no entries")
    required = ("instruction", "output") if require_output else ("instruction",)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise GptlabError(f"{where}: entry {i}: expected an object, got {type(entry).__name__}")
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
