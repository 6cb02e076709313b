"""``gptlab bench classify --quick``: the whole benchmark path on a tiny model, and the TF-IDF baseline."""

from __future__ import annotations

import json

import pytest

from gptlab.app import main
from gptlab.finetune.classify.baseline import TfidfLogReg, accuracy
from gptlab.finetune.classify.data import balanced_split, read_sms_spam


def test_bench_classify_quick_json(capsys):
    assert main(["bench", "classify", "--quick", "--threads", "1", "--json"]) == 0
    out, _ = capsys.readouterr()
    r = json.loads(out)
    assert r["quick"] and not r["met"] and r["seeds"] == [123]
    run = r["runs"][0]
    assert run["left_out_ham"] == 4080
    assert 0.5 < run["test_accuracy"] <= 1 and 0 <= run["left_out_fpr"] <= 1
    assert sum(map(sum, run["test_confusion"])) == 300
    # The recipe is an ensemble; the smoke run keeps two members, each reported on its own.
    assert r["recipe"]["ensemble"] == 2 and len(run["member_test_accuracies"]) == 2
    # The baseline on the book's seed: scikit-learn's TfidfVectorizer + LogisticRegression give 293/300.
    assert run["tfidf_test_accuracy"] == pytest.approx(293 / 300)
    assert r["book"]["GPT-2 124M, last block + head (book ch. 6)"] == 0.9567


def test_tfidf_baseline_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn")  # noqa: F841 - a reference only where installed
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    s = balanced_split(read_sms_spam(), 124)
    ours = TfidfLogReg().fit(s.train.texts, s.train.labels).predict(s.test.texts)
    vec = TfidfVectorizer()
    ref = LogisticRegression().fit(vec.fit_transform(s.train.texts), s.train.labels).predict(vec.transform(s.test.texts))
    assert ours == list(ref)


def test_tfidf_multiclass_learns():
    texts = ["red apple", "green apple", "blue sky", "grey sky", "fast car", "red car"] * 3
    labels = ["fruit", "fruit", "sky", "sky", "car", "car"] * 3
    m = TfidfLogReg(c=10).fit(texts, labels)
    assert accuracy(m.predict(["apple pie", "cloudy sky", "old car"]), ["fruit", "sky", "car"]) == 1.0


def test_default_base_is_pretrained_once_and_keeps_stdout_clean(tmp_path, monkeypatch, capsys):
    """Without --model the recipe's base is pretrained into runs/classify-base; its log must not reach
    stdout (where --json prints), and a second call reuses it."""
    from gptlab.bench import classify as bench
    from gptlab.outdir import is_run_dir

    monkeypatch.chdir(tmp_path)
    small = dict(bench.PRETRAIN_SETTINGS, tokenizer="bpe:300", max_steps=2, batch_size=2)
    monkeypatch.setattr(bench, "PRETRAIN_SETTINGS", small)
    monkeypatch.setattr(bench, "PRETRAIN_CORPUS", ("the-verdict",))
    logged: list[str] = []
    path = bench._default_base(logged.append)
    out, err = capsys.readouterr()
    assert out == "" and "step" in err
    assert path == "runs/classify-base" and is_run_dir(tmp_path / path) and len(logged) == 1
    assert bench._default_base(logged.append) == path and len(logged) == 1


@pytest.mark.parametrize("item, message", [
    ("ensemble=abc", "expected an integer"),
    ("epochs=1.5", "expected an integer"),
    ("lr=fast", "expected a number"),
    ("append_eot=1", "expected true or false"),
    ("nosuch=1", "expected FIELD=VALUE"),
])
def test_bad_set_values_exit_2(item, message, capsys):
    assert main(["bench", "classify", "--quick", "--set", item]) == 2
    _, err = capsys.readouterr()
    assert message in err and err.count("\n") == 1


def test_bad_seeds_exit_2(capsys):
    assert main(["bench", "classify", "--quick", "--seeds", "1x"]) == 2
    _, err = capsys.readouterr()
    assert "--seeds '1x'" in err and err.count("\n") == 1


def test_set_values_take_the_field_types():
    from gptlab.bench.classify import _recipe

    r = _recipe(["ensemble=3", "lr=1", "schedule=constant", "max_length=64", "drop_rate=null", "append_eot=true"])
    assert r["ensemble"] == 3 and r["lr"] == 1.0 and isinstance(r["lr"], float)
    assert r["schedule"] == "constant" and r["max_length"] == 64 and r["drop_rate"] is None and r["append_eot"] is True
