"""Classification data: the book's SMS spam split, labelled files, the label map, bad input."""

from __future__ import annotations

import json

import pytest

from gptlab.errors import GptlabError
from gptlab.finetune.classify.data import (
    DataSpec,
    LabeledTexts,
    LabelMap,
    balanced_split,
    eval_data,
    read_labeled_file,
    read_sms_spam,
    read_texts,
)
from gptlab.finetune.classify.metrics import classification_metrics


@pytest.fixture(scope="module")
def sms():
    return read_sms_spam()


def test_sms_spam_read_as_plain_lines(sms):
    # All 5,574 messages; a CSV reader would merge lines around stray quote characters.
    assert len(sms) == 5574
    assert sms.counts() == {"ham": 4827, "spam": 747}
    assert any('"' in t for t in sms.texts)


def test_book_split_sizes_and_balance(sms):
    s = balanced_split(sms, seed=123)
    assert (len(s.train), len(s.val), len(s.test)) == (1045, 149, 300)
    kept = s.train.labels + s.val.labels + s.test.labels
    assert kept.count("spam") == kept.count("ham") == 747
    assert len(s.left_out) == 4827 - 747 and set(s.left_out.labels) == {"ham"}
    # No message is in two parts (by line number in the file).
    parts = [set(p.lines) for p in (s.train, s.val, s.test, s.left_out)]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 5574


def test_split_depends_only_on_seed(sms):
    a, b, c = balanced_split(sms, 5), balanced_split(sms, 5), balanced_split(sms, 6)
    assert a.test.texts == b.test.texts
    assert a.test.texts != c.test.texts


def test_csv_tsv_jsonl(tmp_path):
    rows = [("good movie, loved it", "pos"), ('a "bad" one', "neg"), ("meh", "neutral")]
    csv = tmp_path / "d.csv"
    csv.write_text("id,review,sentiment\n" + "".join(f'{i},"{t.replace(chr(34), chr(34) * 2)}",{lab}\n' for i, (t, lab) in enumerate(rows)))
    tsv = tmp_path / "d.tsv"
    tsv.write_text("review\tsentiment\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps({"review": t, "sentiment": lab}) + "\n" for t, lab in rows))
    for path in (csv, tsv, jl):
        d = read_labeled_file(path, "review", "sentiment")
        assert d.texts == [t for t, _ in rows] and d.labels == ["pos", "neg", "neutral"]
    assert read_texts(jl, "review") == [t for t, _ in rows]
    assert LabelMap.from_labels(read_labeled_file(jl, "review", "sentiment")).names == ["neg", "neutral", "pos"]


def test_missing_label_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,category\nhello,a\n")
    with pytest.raises(GptlabError, match=r"no column 'label'.*text, category"):
        read_labeled_file(p)
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "hi", "category": "a"}\n')
    with pytest.raises(GptlabError, match=r"line 1: no 'label' field"):
        read_labeled_file(j)


def test_single_class(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("text\tlabel\na\tx\nb\tx\nc\tx\n")
    d = read_labeled_file(p)
    with pytest.raises(GptlabError, match="single class"):
        LabelMap.from_labels(d)
    with pytest.raises(GptlabError, match="single class"):
        balanced_split(d, 1)


def test_empty_text(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nhello,a\n  ,b\n")
    with pytest.raises(GptlabError, match=r"d.csv line 3: empty text"):
        read_labeled_file(p)


def test_unknown_label():
    lm = LabelMap(["ham", "spam"])
    data = LabeledTexts(["x", "y"], ["spam", "eggs"], "f.tsv", [1, 2])
    with pytest.raises(GptlabError, match=r"f.tsv line 2: unknown label 'eggs'; the model knows ham, spam"):
        lm.encode(data)


def test_metrics_against_hand_count():
    y_true = [0, 0, 0, 1, 1, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 1, 0, 1, 2]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 3, 0], [0, 0, 1]]
    assert m["accuracy"] == 6 / 8
    assert m["per_class"]["b"]["precision"] == 3 / 4 and m["per_class"]["b"]["recall"] == 3 / 4
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx((2 / 3 + 3 / 4 + 1) / 3)
    binary = classification_metrics([0, 1, 1, 0], [0, 1, 0, 1], ["ham", "spam"])
    assert (binary["precision"], binary["recall"]) == (0.5, 0.5)


@pytest.mark.parametrize("name,content,byte,line", [
    ("d.csv", b"text,label\nok,a\n\xffno,b\n", 16, 3),
    ("d.tsv", b"text\tlabel\nok\ta\nno\t\xc3(\n", 19, 3),
    ("d.jsonl", b'{"text": "ok", "label": "a"}\n{"text": "\x80", "label": "b"}\n', 39, 2),
])
def test_non_utf8_data_names_file_byte_and_line(tmp_path, name, content, byte, line):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(GptlabError, match=rf"{name}: not UTF-8 text \(byte {byte}, line {line}: .*\); save it as UTF-8"):
        read_labeled_file(p)


def test_non_utf8_texts_to_classify(tmp_path):
    p = tmp_path / "binary.bin"
    p.write_bytes(b"hello\n\xff\xfe\x00")
    with pytest.raises(GptlabError, match=r"binary.bin: not UTF-8 text \(byte 6, line 2"):
        read_texts(p)


def test_byte_order_mark_and_line_ends(tmp_path):
    # A spreadsheet's UTF-8 CSV starts with a byte-order mark, which must not become part of "text".
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\r\n\"two\r\nlines\",a\r\nb,c\r\n")
    d = read_labeled_file(p)
    assert d.texts == ["two\r\nlines", "b"] and d.labels == ["a", "c"] and d.lines == [3, 4]
    # U+2028 is a line separator to str.splitlines, but JSON strings may hold it raw.
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "a\u2028b", "label": "x"}\r\n{"text": "c", "label": "y"}\n', encoding="utf-8")
    assert read_labeled_file(j).texts == ["a\u2028b", "c"]


def test_training_split_without_a_class_says_so():
    # 20 common rows and one rare one: with split seed 11 the rare row lands in the test split.
    d = LabeledTexts([f"t{i}" for i in range(21)], ["a", "b"] * 10 + ["c"], "rare.tsv")
    balanced_split(d, 12, balance=False)
    with pytest.raises(GptlabError, match=r"rare.tsv: the training split got 'a', 'b' but no 'c' example "
                                          r"\(14 train / 2 val / 5 test examples from 21 rows, split seed 11\); "
                                          r"give more rows per class, or change --split-seed"):
        balanced_split(d, 11, balance=False)
    four = LabeledTexts(["good", "bad", "nice", "awful"], ["pos", "neg", "pos", "neg"], "four.csv")
    with pytest.raises(GptlabError, match=r"four.csv: the training split got a single class \('pos'\) but no 'neg' "
                                          r"example and the validation split is empty \(2 train / 0 val / 2 test"):
        balanced_split(four, 123, balance=False)


def test_data_spec_is_recorded_and_rebuilds_the_split(tmp_path, monkeypatch):
    rows = [(f"text number {i}", "ab"[i % 2]) for i in range(40)]
    p = tmp_path / "d.csv"
    p.write_text("body,tag\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    spec = DataSpec.from_flags(str(p), "body", "tag", split_seed=9, val_fraction=0.25, test_fraction=0.25)
    splits = spec.split()
    record = spec.record(splits)
    assert record["data"] == str(p.resolve()) and record["sizes"] == {"train": 20, "val": 10, "test": 10, "left_out": 0}
    assert DataSpec.from_record(record) == DataSpec(str(p.resolve()), "body", "tag", 9, False, (0.5, 0.25))
    monkeypatch.chdir(tmp_path.parent)
    for split in ("train", "val", "test"):
        got, name, data = eval_data(record, split=split)
        assert (got.texts, name, data) == (splits.get(split).texts, split, str(p.resolve()))
    assert eval_data(record)[0].texts == splits.test.texts  # test by default
    assert len(eval_data(record, split="all")[0]) == 40
    with pytest.raises(GptlabError, match=r"--data: x/classifier.json does not record the data"):
        eval_data({}, where="x/classifier.json")
    with pytest.raises(GptlabError, match=r"no column 'text'"):
        eval_data({}, str(p))  # an old folder: the columns default to text/label


def test_data_spec_fraction_flags():
    with pytest.raises(GptlabError, match=r"--val-fraction must be between 0 and 1, got nan"):
        DataSpec.from_flags("d.csv", val_fraction=float("nan"))
    with pytest.raises(GptlabError, match=r"leave nothing to train on"):
        DataSpec.from_flags("d.csv", val_fraction=0.5, test_fraction=0.5)
    # The book's default split of sms-spam is what the CLI's flags give.
    assert DataSpec.from_flags("sms-spam").balanced
