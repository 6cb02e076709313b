"""Labelled text for classification: the SMS spam collection (the book's split) and CSV/TSV/JSONL files.

The book's preparation of SMS spam (chapter 6): undersample ham to the 747 spam messages, shuffle, and
split 70 / 10 / 20 % into train / validation / test. The UCI file is read as plain ``label<TAB>text``
lines: some messages contain quote characters, which a CSV reader would take as field quoting and merge
lines (that is how pandas' default reader ends up with 5,572 of the 5,574 messages).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
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

    def sizes(self) -> dict[str, int]:
        """Examples in each part (what ``classifier.json`` records, to notice a changed data file)."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test),
                "left_out": len(self.left_out) if self.left_out is not None else 0}


def check_splits(splits: Splits, classes: Iterable[str] = (), context: str = "", advice: str = "") -> None:
    """Raise :class:`GptlabError` unless train, validation and test all have examples and the training
    split holds at least two classes, including every one of ``classes``.

    A split made at random can leave a class out of training even when the data has it; the message
    says which part came out wrong and how big each part is (``context`` adds how it was made, ``advice``
    what to change), since "a single class" about a file with two would only mislead.
    """
    problems = []
    seen = sorted(set(splits.train.labels))
    missing = sorted(set(classes) - set(seen))
    if len(splits.train) and (len(seen) < 2 or missing):
        got = f"got a single class ({seen[0]!r})" if len(seen) < 2 else f"got {', '.join(map(repr, seen))}"
        lacks = f" but no {', '.join(map(repr, missing))} example" if missing else ""
        problems.append(f"the training split {got}{lacks}")
    empty = [name for name, part in (("training", splits.train), ("validation", splits.val), ("test", splits.test))
             if not len(part)]
    if empty:
        problems.append(f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty")
    if problems:
        where = splits.train.source or splits.test.source or "data"
        sizes = f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test examples{context}"
        raise GptlabError(f"{where}: {' and '.join(problems)} ({sizes}){advice}")


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


def read_utf8(path: Path) -> str:
    """The text of a user's file; bytes that are not UTF-8 are an error naming the file, byte and line.

    The whole file is decoded at once (classification data sets are small) so that the offset reported
    is the byte's place in the file, not in some buffer. A leading byte-order mark (spreadsheets save
    one) is dropped: it would otherwise become part of the first column name.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GptlabError(f"{path}: cannot read ({exc.strerror or exc})") from None
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        line = raw.count(b"\n", 0, at) + 1
        raise GptlabError(f"{path}: not UTF-8 text (byte {at}, line {line}: {exc.reason}); save it as UTF-8") from None


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
        # newline=None splits lines as open() does (\n, \r, \r\n), not at U+2028 & co., which JSON
        # strings may hold raw (str.splitlines would cut them there).
        with io.StringIO(read_utf8(path), newline=None) as f:
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
        with io.StringIO(read_utf8(path), newline="") as f:  # newline="": csv handles line ends in quotes
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
    for line in read_utf8(path).splitlines():
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
    splits = Splits(
        data.subset(keep[:n_train]),
        data.subset(keep[n_train : n_train + n_val]),
        data.subset(keep[n_train + n_val :]),
        data.subset(left) if balance else None,
    )
    kept = " kept after balancing the classes" if balance else ""
    check_splits(
        splits, by_label, context=f" from {n} rows{kept}, split seed {seed}",
        advice="; give more rows per class, or change --split-seed, --val-fraction or --test-fraction"
        + (", or pass --no-balance" if balance else ""),
    )
    return splits


@dataclass
class DataSpec:
    """Which labelled data a classifier learns from and how it is split.

    ``classifier.json`` records it (:meth:`record`) so that ``classify eval`` can rebuild the very same
    train/val/test split later without the user repeating the file, its columns and the split flags.
    """

    data: str  # sms-spam, or a CSV/TSV/JSONL file
    text_column: str = "text"
    label_column: str = "label"
    split_seed: int = 123
    balance: bool | None = None  # undersample every class to the smallest; None: on for sms-spam only
    fractions: tuple[float, float] = (0.7, 0.1)  # train and validation shares; test gets the rest

    @classmethod
    def from_flags(
        cls, data: str, text_column: str = "text", label_column: str = "label", split_seed: int = 123,
        balance: bool | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
    ) -> DataSpec:
        """The spec of ``classify train``'s flags; bad fractions are an error naming the flag."""
        for flag, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
            if not 0 < value < 1:  # also refuses nan
                raise GptlabError(f"{flag} must be between 0 and 1, got {value}")
        train = 1 - val_fraction - test_fraction
        if train <= 0:
            raise GptlabError("--val-fraction + --test-fraction leave nothing to train on")
        return cls(data, text_column, label_column, split_seed, balance, (train, val_fraction))

    @property
    def balanced(self) -> bool:
        """Whether the split undersamples the classes (the default depends on the data)."""
        return self.balance if self.balance is not None else self.data == SMS_SPAM

    def load(self) -> LabeledTexts:
        """All labelled examples of the data."""
        return load_labeled(self.data, self.text_column, self.label_column)

    def split(self, data: LabeledTexts | None = None) -> Splits:
        """The train/val/test split of ``data`` (default: :meth:`load`)."""
        return balanced_split(self.load() if data is None else data, self.split_seed, self.fractions, self.balanced)

    def same_data(self, spec: str) -> bool:
        """True if ``spec`` (a --data value) names this data: the same named data set, or the same file."""
        if SMS_SPAM in (spec, self.data):
            return spec == self.data
        return Path(spec).expanduser().resolve() == Path(self.data).expanduser().resolve()

    def record(self, splits: Splits) -> dict[str, Any]:
        """What ``classifier.json`` keeps under ``data``: this spec (the file's absolute path, so the
        folder works from any working directory), the split's sizes and the file's SHA-256 (to notice a
        file edited since, whose rebuilt split would mix training rows into the test set)."""
        rec: dict[str, Any] = {
            "data": self.data if self.data == SMS_SPAM else str(Path(self.data).expanduser().resolve()),
            "text_column": self.text_column,
            "label_column": self.label_column,
            "split_seed": self.split_seed,
            "balance": self.balanced,
            "fractions": list(self.fractions),
            "sizes": splits.sizes(),
        }
        if self.data != SMS_SPAM:
            rec["sha256"] = file_sha256(self.data)
        return rec

    @classmethod
    def from_record(cls, record: Any, where: str = "classifier.json") -> DataSpec | None:
        """The spec in a :meth:`record`, or None when it names no data (a folder written by an older
        gptlab or by a library caller that passed no data description)."""
        if not isinstance(record, dict) or not isinstance(record.get("data"), str):
            return None
        fractions = record.get("fractions", [0.7, 0.1])
        if not (isinstance(fractions, list) and len(fractions) == 2
                and all(isinstance(f, (int, float)) and 0 < f < 1 for f in fractions)):
            raise GptlabError(f"{where}: data.fractions must be two shares between 0 and 1, got {fractions!r}")
        seed = record.get("split_seed", 123)
        if not isinstance(seed, int):
            raise GptlabError(f"{where}: data.split_seed must be an integer, got {seed!r}")
        balance = record.get("balance")
        return cls(
            record["data"],
            str(record.get("text_column", "text")),
            str(record.get("label_column", "label")),
            seed,
            balance if isinstance(balance, bool) else None,
            (float(fractions[0]), float(fractions[1])),
        )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def eval_data(
    record: Any, data: str | None = None, text_column: str | None = None, label_column: str | None = None,
    split: str | None = None, where: str = "classifier.json",
) -> tuple[LabeledTexts, str, str]:
    """``(examples, split name, data)`` to evaluate a classifier on, from its recorded data and the flags.

    ``record`` is ``classifier.json``'s ``data``. Without ``data`` the recorded data is used; the columns
    default to the recorded ones. On the data the classifier was trained with (and on sms-spam, whose
    split is the book's), ``split`` (default ``test``) picks a part of the same split it was trained on;
    any other file is used whole (``split`` ``all``), since it has no such parts.
    """
    trained = DataSpec.from_record(record, where)
    if data is None:
        if trained is None:
            raise GptlabError(
                f"--data: {where} does not record the data the classifier was trained on (a folder from an "
                f"older gptlab, or trained from Python without a data description); give --data FILE or sms-spam"
            )
        data = trained.data
    is_trained = trained is not None and trained.same_data(data)
    spec = trained if is_trained else None
    if spec is None and data == SMS_SPAM:
        spec = DataSpec(SMS_SPAM)  # a model trained on other data, scored on the book's split
    if text_column is None:
        text_column = trained.text_column if trained is not None else "text"
    if label_column is None:
        label_column = trained.label_column if trained is not None else "label"
    columns = {"text_column": text_column, "label_column": label_column}
    if spec is None:
        if split not in (None, "all"):
            raise GptlabError(
                f"--split {split}: {data} is not the data the classifier was trained on "
                f"({trained.data if trained else 'not recorded'}), so it has no {split} part; "
                f"leave --split out (or give --split all) to use the whole file"
            )
        return load_labeled(data, **columns), "all", data
    if data != SMS_SPAM and not Path(data).is_file():
        raise GptlabError(f"{data}: no such file (the data the classifier was trained on, recorded in {where}); "
                          f"give --data FILE")
    spec = replace(spec, data=data, **columns)
    split = split or "test"
    full = spec.load()
    if split == "all":
        return full, split, data
    # A file edited since training would split differently and mix training rows into the test part.
    recorded = record if is_trained else {}
    changed = (f"{data}: changed since the classifier was trained ({{}}), so its {split} split cannot be "
               f"rebuilt; use --split all to evaluate on the whole file")
    if "sha256" in recorded and file_sha256(data) != recorded["sha256"]:
        raise GptlabError(changed.format(f"its SHA-256 differs from the one in {where}"))
    splits = spec.split(full)
    sizes = recorded.get("sizes")
    if isinstance(sizes, dict) and any(sizes.get(k) != v for k, v in splits.sizes().items() if k in sizes):
        now = splits.sizes()
        raise GptlabError(changed.format(
            f"it splits into {now['train']} / {now['val']} / {now['test']} train / val / test examples, "
            f"{where} recorded {sizes.get('train')} / {sizes.get('val')} / {sizes.get('test')}"
        ))
    return splits.get(split), split, data
