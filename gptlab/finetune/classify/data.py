"""Labelled text for classification: the SMS spam collection (the book's split) and CSV/TSV/JSONL files.

The book's preparation of SMS spam (chapter 6): undersample ham to the 747 spam messages, shuffle, and
split 70 / 10 / 20 % into train / validation / test. The UCI file is read as plain ``label<TAB>text``
lines: some messages contain quote characters, which a CSV reader would take as field quoting and merge
lines (that is how pandas' default reader ends up with 5,572 of the 5,574 messages).
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError

SMS_SPAM = "sms-spam"


@dataclass
class LabeledTexts:
    """Parallel lists of texts and label names, with where they came from (for error messages)."""

    texts: list[str]
    labels: list[str]
    source: str = ""
    # Line number (1-based) of each example in its file, when known.
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> LabeledTexts:
        """The examples at ``indices``, in that order."""
        return LabeledTexts(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            self.source,
            [self.lines[i] for i in indices] if self.lines else [],
        )

    def counts(self) -> dict[str, int]:
        """Examples per label, labels sorted."""
        return dict(sorted(Counter(self.labels).items()))


@dataclass
class Splits:
    """Train / validation / test examples, and (for a balanced split) the examples left out."""

    train: LabeledTexts
    val: LabeledTexts
    test: LabeledTexts
    left_out: LabeledTexts | None = None

    def get(self, name: str) -> LabeledTexts:
        """A split by name: train, val, test or left-out."""
        table = {"train": self.train, "val": self.val, "test": self.test, "left-out": self.left_out}
        if name not in table:
            raise GptlabError(f"split {name!r}: expected one of train, val, test, left-out")
        if table[name] is None:
            raise GptlabError("split 'left-out': this split was not balanced, nothing was left out")
        return table[name]


class LabelMap:
    """Label names <-> class ids (ids follow the sorted names unless given)."""

    def __init__(self, names: list[str]) -> None:
        if len(names) < 2:
            raise GptlabError(f"a classifier needs at least two classes, got {names!r}")
        if len(set(names)) != len(names):
            raise GptlabError(f"label names must be distinct, got {names!r}")
        self.names = list(names)
        self.ids = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_labels(cls, data: LabeledTexts) -> LabelMap:
        """The labels seen in ``data`` (at least two), sorted."""
        names = sorted(set(data.labels))
        if len(names) < 2:
            where = data.source or "the data"
            raise GptlabError(
                f"{where}: found a single class ({names[0] if names else 'none'!r}); "
                "classification needs at least two labels"
            )
        return cls(names)

    def encode(self, data: LabeledTexts) -> list[int]:
        """Class ids of ``data``'s labels; an unknown label is an error that names it and the known ones."""
        out = []
        for i, label in enumerate(data.labels):
            if label not in self.ids:
                line = f" line {data.lines[i]}" if data.lines else ""
                raise GptlabError(
                    f"{data.source or 'data'}{line}: unknown label {label!r}; the model knows {', '.join(self.names)}"
                )
            out.append(self.ids[label])
        return out

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``labels.json`` holds)."""
        return {"labels": self.names}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelMap:
        """Read :meth:`to_dict`'s output."""
        names = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GptlabError("labels.json: expected {\"labels\": [names...]}")
        return cls(names)


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise GptlabError(f"{where}: text should be a string, got {type(text).__name__}")
    if not text.strip():
        raise GptlabError(f"{where}: empty text")
    return text


def read_sms_spam(path: str | os.PathLike | None = None) -> LabeledTexts:
    """The UCI SMS spam collection as plain ``label<TAB>text`` lines (5,574 messages)."""
    if path is None:
        from gptlab.data.registry import dataset_path

        path = dataset_path(SMS_SPAM)
    path = Path(path)
    texts, labels, lines = [], [], []
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            label, sep, text = line.partition("\t")
            if not sep:
                raise GptlabError(f"{path} line {n}: expected label<TAB>text")
            texts.append(_check_text(text, f"{path} line {n}"))
            labels.append(label)
            lines.append(n)
    return LabeledTexts(texts, labels, str(path), lines)


def read_labeled_file(
    path: str | os.PathLike, text_column: str = "text", label_column: str | None = "label"
) -> LabeledTexts:
    """Texts and labels from a CSV, TSV or JSONL file (chosen by the extension: .csv, .tsv/.tab, .jsonl/.json).

    CSV/TSV files need a header row naming the columns. ``label_column=None`` reads texts only (labels
    are then empty strings), for prediction.
    """
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path}: no such file")
    suffix = path.suffix.lower()
    texts, labels, lines = [], [], []
    if suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise GptlabError(f"{path} line {n}: not a JSON object ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise GptlabError(f"{path} line {n}: expected a JSON object per line")
                for col in (text_column, label_column):
                    if col is not None and col not in row:
                        raise GptlabError(
                            f"{path} line {n}: no {col!r} field (fields: {', '.join(row)}); "
                            f"choose with --text-column/--label-column"
                        )
                texts.append(_check_text(row[text_column], f"{path} line {n}"))
                labels.append(str(row[label_column]) if label_column is not None else "")
                lines.append(n)
    elif suffix in (".csv", ".tsv", ".tab", ".txt"):
        delimiter = "," if suffix == ".csv" else "\t"
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise GptlabError(f"{path}: empty file (expected a header row naming the columns)")
            for col in (text_column, label_column):
                if col is not None and col not in header:
                    raise GptlabError(
                        f"{path}: no column {col!r} in the header ({', '.join(header)}); "
                        f"choose with --text-column/--label-column"
                    )
            ti = header.index(text_column)
            li = header.index(label_column) if label_column is not None else None
            for row in reader:
                n = reader.line_num
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) <= max(ti, li or 0):
                    raise GptlabError(f"{path} line {n}: {len(row)} fields, the header has {len(header)}")
                texts.append(_check_text(row[ti], f"{path} line {n}"))
                labels.append(row[li].strip() if li is not None else "")
                lines.append(n)
    else:
        raise GptlabError(f"{path}: unknown file type {suffix or '(none)'}; expected .csv, .tsv or .jsonl")
    if not texts:
        raise GptlabError(f"{path}: no examples")
    return LabeledTexts(texts, labels, str(path), lines)


def read_texts(path: str | os.PathLike, text_column: str = "text") -> list[str]:
    """Texts to classify: a CSV/TSV/JSONL file's text column, or a plain file with one text per line."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl", ".json", ".ndjson"):
        return read_labeled_file(path, text_column, None).texts
    if not path.is_file():
        raise GptlabError(f"{path}: no such file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            out.append(line)
    if not out:
        raise GptlabError(f"{path}: no texts (expected one per line)")
    return out


def load_labeled(spec: str, text_column: str = "text", label_column: str = "label") -> LabeledTexts:
    """``sms-spam`` or a labelled file."""
    if spec == SMS_SPAM:
        return read_sms_spam()
    return read_labeled_file(spec, text_column, label_column)


def balanced_split(
    data: LabeledTexts,
    seed: int = 123,
    fractions: tuple[float, float] = (0.7, 0.1),
    balance: bool = True,
) -> Splits:
    """The book's preparation: undersample every class to the smallest one's size, shuffle, split.

    ``fractions`` are the train and validation shares (the test set gets the rest); sizes are rounded
    down as the book does (``int(n * 0.7)``), so 1,494 SMS messages give 1,045 / 149 / 300. With
    ``balance=False`` every example is kept. Everything depends only on ``seed``.
    """
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(data.labels):
        by_label.setdefault(label, []).append(i)
    if len(by_label) < 2:
        LabelMap.from_labels(data)  # raises the one-class error
    keep: list[int] = []
    left: list[int] = []
    smallest = min(len(v) for v in by_label.values())
    for label in sorted(by_label):
        idx = by_label[label]
        if balance and len(idx) > smallest:
            chosen = set(rng.sample(idx, smallest))
            keep += [i for i in idx if i in chosen]
            left += [i for i in idx if i not in chosen]
        else:
            keep += idx
    rng.shuffle(keep)
    n = len(keep)
    n_train = int(n * fractions[0])
    n_val = int(n * fractions[1])
    if n_train < 1 or n - n_train - n_val < 1:
        raise GptlabError(f"{data.source or 'data'}: {n} examples are too few to split into train/val/test")
    return Splits(
        data.subset(keep[:n_train]),
        data.subset(keep[n_train : n_train + n_val]),
        data.subset(keep[n_train + n_val :]),
        data.subset(left) if balance else None,
    )
