"""``gptlab classify train|eval|predict`` on a tiny model, and every bad input the issue lists (exit 2)."""

from __future__ import annotations

import json
import os
import random

import pytest

from gptlab.app import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# The classifier tests' base: GPT-2's vocabulary, 16 wide, untied, no query/key/value bias.
TINY_BASE = dict(emb_dim=16, qkv_bias=False, tie_weights=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_gpt_folder):
    d = tmp_path_factory.mktemp("cls")
    rng = random.Random(0)
    rows = []
    for i in range(150):
        label = ["yes", "no"][i % 2]
        word = rng.choice(["great", "lovely", "superb"] if label == "yes" else ["awful", "broken", "terrible"])
        rows.append((f"{rng.choice(['this is', 'it was', 'so'])} {word}", label))
    (d / "reviews.csv").write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    (d / "nolabel.csv").write_text("text,stars\n" + "".join(f"{t},5\n" for t, _ in rows[:10]))
    (d / "oneclass.jsonl").write_text("".join(json.dumps({"text": t, "label": "yes"}) + "\n" for t, _ in rows[:20]))
    (d / "unknown.tsv").write_text("text\tlabel\nsuperb\tyes\nmeh\tmaybe\n")
    (d / "empty.jsonl").write_text(json.dumps({"text": "fine", "label": "yes"}) + "\n" + json.dumps({"text": "", "label": "no"}) + "\n")
    (d / "texts.txt").write_text("it was superb\nso broken\n")
    base = tiny_gpt_folder(d / "base", **TINY_BASE)
    other = tiny_gpt_folder(d / "other", seed=1, **TINY_BASE)
    return d, base, other


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory):
    d, base, _ = files
    out = tmp_path_factory.mktemp("out") / "clf"
    code = main(["classify", "train", "--data", str(d / "reviews.csv"), "--model", base, "--out", str(out),
                 "--trainable", "all", "--epochs", "3", "--lr", "5e-3", "--threads", "1", "--no-progress", "--json"])
    assert code == 0
    return out


def test_train_json_and_folder(trained, capsys):
    results = json.loads((trained / "results.json").read_text())
    assert results["test"]["accuracy"] >= 0.9
    assert results["labels"] == ["no", "yes"]
    assert (trained / "accuracy.png").is_file() and (trained / "labels.json").is_file()


def test_eval_on_a_file(trained, files, capsys, tmp_path):
    d, _, _ = files
    # The file it was trained on: the test part of the same split (150 rows -> 105 / 15 / 30), or all of it.
    code, out, _ = run(capsys, "classify", "eval", "--model", trained, "--data", d / "reviews.csv", "--json")
    assert code == 0
    m = json.loads(out)
    assert m["n"] == 30 and m["split"] == "test" and m["accuracy"] >= 0.9 and len(m["confusion_matrix"]) == 2
    code, out, _ = run(capsys, "classify", "eval", "--model", trained, "--data", d / "reviews.csv", "--split", "all",
                       "--json")
    assert code == 0 and json.loads(out)["n"] == 150
    # Any other file is used whole.
    other = tmp_path / "more.csv"
    other.write_text((d / "reviews.csv").read_text())
    code, out, _ = run(capsys, "classify", "eval", "--model", trained, "--data", other, "--json")
    assert code == 0 and json.loads(out)["n"] == 150 and json.loads(out)["split"] == "all"
    code, out, _ = run(capsys, "classify", "eval", "--model", trained, "--data", other)
    assert code == 0 and "acc" in out and "pred yes" in out


def test_predict_texts_and_input_file(trained, files, capsys):
    d, _, _ = files
    code, out, _ = run(capsys, "classify", "predict", "--model", trained, "so superb", "--input", d / "texts.txt", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["so superb", "it was superb", "so broken"]
    assert [r["label"] for r in rows] == ["yes", "yes", "no"]
    assert set(rows[0]["probabilities"]) == {"no", "yes"}
    code, out, _ = run(capsys, "classify", "predict", "--model", trained, "this is awful")
    assert code == 0 and out.startswith("no\t")


def test_ensemble_train_and_predict(files, capsys, tmp_path):
    d, base, _ = files
    out = tmp_path / "ens"
    code, text, _ = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", out,
                        "--trainable", "all", "--epochs", "2", "--lr", "5e-3", "--ensemble", "2", "--threads", "1",
                        "--no-progress")
    assert code == 0
    assert "member 1 (seed 123)" in text and "member 2 (seed 124)" in text and "ensemble of 2" in text
    assert json.loads((out / "classifier.json").read_text())["ensemble"] == 2
    code, text, _ = run(capsys, "classify", "predict", "--model", out, "so superb", "--json")
    row = json.loads(text)
    assert code == 0 and row["label"] == "yes" and abs(sum(row["probabilities"].values()) - 1) < 1e-4
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", out,
                       "--ensemble", "0")
    assert code == 2 and "--ensemble must be at least 1" in err


def test_missing_label_column_exit_2(files, capsys, tmp_path):
    d, base, _ = files
    code, _, err = run(capsys, "classify", "train", "--data", d / "nolabel.csv", "--model", base, "--out", tmp_path / "x")
    assert code == 2 and "no column 'label'" in err and err.count("\n") == 1


def test_single_class_exit_2(files, capsys, tmp_path):
    d, base, _ = files
    code, _, err = run(capsys, "classify", "train", "--data", d / "oneclass.jsonl", "--model", base, "--out", tmp_path / "x")
    assert code == 2 and "single class" in err


def test_unknown_label_at_eval_exit_2(trained, files, capsys):
    d, _, _ = files
    code, _, err = run(capsys, "classify", "eval", "--model", trained, "--data", d / "unknown.tsv")
    assert code == 2 and "unknown label 'maybe'" in err and "line 3" in err


def test_empty_text_exit_2(trained, files, capsys, tmp_path):
    d, base, _ = files
    code, _, err = run(capsys, "classify", "train", "--data", d / "empty.jsonl", "--model", base, "--out", tmp_path / "x")
    assert code == 2 and "line 2: empty text" in err
    code, _, err = run(capsys, "classify", "predict", "--model", trained, "   ")
    assert code == 2 and "empty" in err


def test_lora_adapter_for_another_base_exit_2(files, capsys, tmp_path):
    d, base, other = files
    out = tmp_path / "lora"
    code, _, _ = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", out,
                     "--lora-rank", "2", "--epochs", "1", "--lr", "5e-3", "--threads", "1", "--no-progress")
    assert code == 0 and (out / "adapter" / "adapter_config.json").is_file()
    code, out_text, _ = run(capsys, "classify", "predict", "--model", out, "so lovely", "--json")
    assert code == 0 and json.loads(out_text)["label"] in ("yes", "no")
    code, _, err = run(capsys, "classify", "predict", "--model", out, "--base", other, "so lovely")
    assert code == 2 and "different base model" in err


def test_bad_flags_exit_2(files, capsys, tmp_path):
    d, base, _ = files
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--trainable", "head",
                       "--lora-rank", "4", "--out", tmp_path / "x")
    assert code == 2 and "--lora-rank" in err
    code, _, err = run(capsys, "classify", "predict", "--model", tmp_path, "hi")
    assert code == 2 and "not a classifier folder" in err


# --------------------------------------------------------------------------- the output folder

QUICK = ("--trainable", "all", "--epochs", "1", "--lr", "5e-3", "--threads", "1", "--no-progress")


def test_non_empty_out_needs_overwrite(files, capsys, tmp_path):
    d, base, _ = files
    out = tmp_path / "clf"
    assert run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", out, *QUICK)[0] == 0
    (out / "old-marker").write_text("from the first run")
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", out, *QUICK)
    assert code == 2 and err.count("\n") == 1
    assert f"--out {out}: folder exists and is not empty" in err and "--overwrite" in err
    assert (out / "old-marker").is_file()
    # --out is checked before the data is read: a missing file does not hide the refusal.
    code, _, err = run(capsys, "classify", "train", "--data", tmp_path / "missing.csv", "--model", base, "--out", out)
    assert code == 2 and "--out" in err and "missing.csv" not in err
    code, _, _ = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", out,
                     "--overwrite", *QUICK)
    assert code == 0 and not (out / "old-marker").exists() and (out / "classifier.json").is_file()
    # --overwrite replaces a classifier folder only.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", other,
                       "--overwrite", *QUICK)
    assert code == 2 and "not a classifier folder" in err and (other / "todo.txt").read_text() == "keep me"


def test_default_out_is_checked_too(files, capsys, tmp_path, monkeypatch):
    d, base, _ = files
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs folder would go")
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, *QUICK)
    assert code == 2 and err.count("\n") == 1 and "--out runs/classify-reviews-" in err


def test_failed_run_leaves_nothing_and_restores_a_replaced_folder(files, capsys, tmp_path, monkeypatch):
    from gptlab.errors import GptlabError
    from gptlab.finetune.classify import train as train_mod

    d, base, _ = files
    new = tmp_path / "deep" / "new"
    code, _, err = run(capsys, "classify", "train", "--data", d / "empty.jsonl", "--model", base, "--out", new)
    assert code == 2 and "empty text" in err and not new.exists()
    old = tmp_path / "old"
    assert run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", old, *QUICK)[0] == 0
    before = sorted(p.name for p in old.iterdir())

    def broken_fit(*args, **kwargs):
        raise GptlabError("the first epoch failed")

    monkeypatch.setattr(train_mod, "fit_member", broken_fit)
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", new, *QUICK)
    assert code == 2 and "the first epoch failed" in err and not new.exists()
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", old,
                       "--overwrite", *QUICK)
    assert code == 2 and sorted(p.name for p in old.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_unwritable_out_exit_2(files, capsys, tmp_path, where):
    d, base, _ = files
    if where == "proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
        out = "/proc/x"
    else:
        (tmp_path / "afile").write_text("")
        out = tmp_path / "afile" / "clf"
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base, "--out", out)
    assert code == 2 and err.count("\n") == 1 and f"--out {out}: cannot create a folder there" in err


# --------------------------------------------------------------------------- text that is not UTF-8


def test_non_utf8_files_exit_2(trained, files, capsys, tmp_path):
    d, base, _ = files
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"hello\n\xff\xfe\x00 bad\n")
    code, _, err = run(capsys, "classify", "predict", "--model", trained, "--input", binary)
    assert code == 2 and err.count("\n") == 1
    assert f"{binary}: not UTF-8 text (byte 6, line 2" in err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"text,label\nfine,yes\n\xe9t\xe9,no\n")
    code, _, err = run(capsys, "classify", "train", "--data", bad_csv, "--model", base, "--out", tmp_path / "x")
    assert code == 2 and "bad.csv: not UTF-8 text (byte 20, line 3" in err and not (tmp_path / "x").exists()
    code, _, err = run(capsys, "classify", "eval", "--model", trained, "--data", bad_csv)
    assert code == 2 and "bad.csv: not UTF-8 text" in err


# --------------------------------------------------------------------------- numeric flags


@pytest.mark.parametrize("flag,value,expected", [
    ("--lora-rank", "0", "--lora-rank must be at least 1, got 0"),
    ("--lora-rank", "-4", "--lora-rank must be at least 1, got -4"),
    ("--lora-alpha", "0", "--lora-alpha must be a positive number"),
    ("--epochs", "-1", "--epochs must be at least 1, got -1"),
    ("--epochs", "0", "--epochs must be at least 1, got 0"),
    ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
    ("--lr", "0", "--lr must be a positive number, got 0.0"),
    ("--lr", "nan", "--lr must be a positive number, got nan"),
    ("--lm-lr", "-1e-3", "--lm-lr must be a positive number"),
    ("--lm-epochs", "-2", "--lm-epochs must be 0 or more, got -2"),
    ("--weight-decay", "-0.1", "--weight-decay must be 0 or more"),
    ("--warmup", "1.5", "--warmup must be a share of the steps between 0 and 1"),
    ("--dropout", "1", "--dropout must be at least 0 and below 1"),
    ("--lora-dropout", "-0.5", "--lora-dropout must be at least 0 and below 1"),
    ("--threads", "0", "--threads must be at least 1, got 0"),
    ("--last-blocks", "0", "--last-blocks must be at least 1, got 0"),
    ("--max-length", "1", "--max-length must be at least 2"),
    ("--val-fraction", "0", "--val-fraction must be between 0 and 1"),
])
def test_nonsensical_numbers_exit_2(files, capsys, tmp_path, flag, value, expected):
    d, base, _ = files
    code, _, err = run(capsys, "classify", "train", "--data", d / "reviews.csv", "--model", base,
                       "--out", tmp_path / "x", f"{flag}={value}")  # "=": argparse takes -1e-3 for a flag
    assert code == 2 and err.count("\n") == 1 and expected in err
    assert not (tmp_path / "x").exists()


def test_predict_batch_size_exit_2(trained, capsys):
    code, _, err = run(capsys, "classify", "predict", "--model", trained, "--batch-size", "0", "hi")
    assert code == 2 and "--batch-size must be at least 1, got 0" in err


# --------------------------------------------------------------------------- splits


def test_training_split_with_one_class_says_so(files, capsys, tmp_path):
    d, base, _ = files
    four = tmp_path / "four.csv"
    four.write_text("text,label\ngood,pos\nbad,neg\nnice,pos\nawful,neg\n")
    code, _, err = run(capsys, "classify", "train", "--data", four, "--model", base, "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1
    assert "the training split got a single class ('pos') but no 'neg' example" in err
    assert "the validation split is empty" in err
    assert "(2 train / 0 val / 2 test examples from 4 rows, split seed 123)" in err
    assert "give more rows per class" in err and "--val-fraction" in err


# --------------------------------------------------------------------------- eval remembers the data


@pytest.fixture(scope="module")
def trained_columns(files, tmp_path_factory):
    """A classifier trained on a TSV with its own column names and split settings."""
    d, base, _ = files
    rows = [line.split(",") for line in (d / "reviews.csv").read_text().splitlines()[1:]]
    data = tmp_path_factory.mktemp("cols") / "reviews.tsv"
    data.write_text("id\treview\tverdict\n" + "".join(f"{i}\t{t}\t{lab}\n" for i, (t, lab) in enumerate(rows)))
    out = data.parent / "clf"
    code = main(["classify", "train", "--data", str(data), "--text-column", "review", "--label-column", "verdict",
                 "--split-seed", "7", "--val-fraction", "0.2", "--test-fraction", "0.3", "--model", base,
                 "--out", str(out), *QUICK])
    assert code == 0
    return data, out


def test_eval_remembers_data_columns_and_split(trained_columns, capsys, monkeypatch, tmp_path):
    data, clf = trained_columns
    monkeypatch.chdir(tmp_path)  # the recorded path is absolute
    recorded = json.loads((clf / "classifier.json").read_text())["data"]
    assert recorded["data"] == str(data.resolve()) and recorded["text_column"] == "review"
    assert recorded["label_column"] == "verdict" and recorded["split_seed"] == 7
    results = json.loads((clf / "results.json").read_text())
    for split in ("test", "val", "train"):
        code, out, _ = run(capsys, "classify", "eval", "--model", clf, "--split", split, "--json")
        assert code == 0, split
        m = json.loads(out)
        assert (m["split"], m["n"], m["data"]) == (split, results[split]["n"], str(data.resolve()))
        assert m["accuracy"] == results[split]["accuracy"]
    code, out, _ = run(capsys, "classify", "eval", "--model", clf)
    assert code == 0 and out.startswith("test ") and f"(n={results['test']['n']})" in out
    # Explicit flags still win.
    code, _, err = run(capsys, "classify", "eval", "--model", clf, "--text-column", "text")
    assert code == 2 and "no column 'text'" in err
    code, _, err = run(capsys, "classify", "eval", "--model", clf, "--data", tmp_path / "elsewhere.csv", "--split", "val")
    assert code == 2 and "--split val" in err and "not the data the classifier was trained on" in err


def test_eval_refuses_a_changed_training_file(trained_columns, capsys, tmp_path):
    import shutil

    data, clf = trained_columns
    copy = tmp_path / "clf"
    shutil.copytree(clf, copy)
    meta = json.loads((copy / "classifier.json").read_text())
    changed = tmp_path / "reviews.tsv"
    changed.write_text(data.read_text() + "999\tso great\tyes\n")
    meta["data"]["data"] = str(changed)
    (copy / "classifier.json").write_text(json.dumps(meta))
    code, _, err = run(capsys, "classify", "eval", "--model", copy)
    assert code == 2 and "changed since the classifier was trained" in err and "--split all" in err
    code, out, _ = run(capsys, "classify", "eval", "--model", copy, "--split", "all", "--json")
    assert code == 0 and json.loads(out)["n"] == 151


def test_eval_of_an_old_folder_needs_data(trained, files, capsys, tmp_path):
    import shutil

    d, _, _ = files
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    meta = json.loads((old / "classifier.json").read_text())
    meta.pop("data")
    (old / "classifier.json").write_text(json.dumps(meta))
    code, _, err = run(capsys, "classify", "eval", "--model", old)
    assert code == 2 and err.count("\n") == 1 and err.startswith("gptlab: error: --data:")
    assert "does not record the data" in err
    code, out, _ = run(capsys, "classify", "eval", "--model", old, "--data", d / "reviews.csv", "--json")
    assert code == 0 and json.loads(out)["n"] == 150
