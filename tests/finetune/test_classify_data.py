"""Classification data: the book's SMS spam split, labelled files, the label map, bad input."""

from __future__ import annotations

import json

import pytest

from gptlab.errors import GptlabError
from gptlab.finetune.classify.data import (
    LabeledTexts,
    LabelMap,
    balanced_split,
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
