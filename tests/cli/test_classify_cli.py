"""``gptlab classify train|eval|predict`` on a tiny model, and every bad input the issue lists (exit 2)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from gptlab.cli import main
from gptlab.model import GPT, GPTConfig


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_base(path, seed=0) -> str:
    torch.manual_seed(seed)
    GPT(GPTConfig(context_length=64, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
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
    base = tiny_base(d / "base")
    other = tiny_base(d / "other", seed=1)
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


def test_eval_on_a_file(trained, files, capsys):
    d, _, _ = files
    code, out, _ = run(capsys, "classify", "eval", "--model", trained, "--data", d / "reviews.csv", "--json")
    assert code == 0
    m = json.loads(out)
    assert m["n"] == 150 and m["accuracy"] >= 0.9 and len(m["confusion_matrix"]) == 2
    code, out, _ = run(capsys, "classify", "eval", "--model", trained, "--data", d / "reviews.csv")
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
