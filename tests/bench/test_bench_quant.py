"""``gptlab bench quant``'s quality half on tiny trained models (the speed half needs the 124M shape)."""

from __future__ import annotations

import json
import math
import random

import pytest

from gptlab.app import main
from gptlab.bench.quant import bench_accuracy, bench_perplexity

SMALL = ["--data", "the-verdict", "--preset", "gpt-nano", "--batch-size", "4", "--block-size", "32",
         "--model-set", "emb_dim=64", "--model-set", "n_heads=2", "--model-set", "n_layers=2",
         "--model-set", "context_length=32", "--eval-batches", "2", "--sample-tokens", "8", "--warmup-steps", "2",
         "--precision", "fp32", "--no-progress", "--max-steps", "30", "--eval-interval", "30"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data):
    run = tmp_path_factory.mktemp("bq") / "run"
    assert main(["pretrain", *SMALL, "--out", str(run)]) == 0
    return run


def test_perplexity_rows_compare_bf16_with_each_mode(run_dir):
    int8, int4 = bench_perplexity(str(run_dir), max_batches=2)
    assert (int8.reference_label, int4.reference_label) == ("int8", "int4")
    assert int8.ours == int4.ours  # both against the same bf16 perplexity
    for row in (int8, int4):
        assert math.isfinite(row.reference) and row.reference > 1
    # A trained model quantized to int8 per channel loses (almost) nothing; int4 a little more.
    assert int8.ratio > 0.97 and int4.ratio > 0.8
    assert (int8.target, int4.target) == (0.99, 0.95)


def test_accuracy_rows_on_a_trained_classifier(tmp_path, tiny_gpt_folder, capsys):
    rng = random.Random(0)
    rows = []
    for i in range(120):
        label = ["yes", "no"][i % 2]
        word = rng.choice(["great", "lovely", "superb"] if label == "yes" else ["awful", "broken", "terrible"])
        rows.append(f"{rng.choice(['this is', 'it was', 'so'])} {word},{label}\n")
    (tmp_path / "reviews.csv").write_text("text,label\n" + "".join(rows))
    base = tiny_gpt_folder(tmp_path / "base", emb_dim=64, qkv_bias=False, tie_weights=False)
    out = tmp_path / "clf"
    assert main(["classify", "train", "--data", str(tmp_path / "reviews.csv"), "--model", base, "--out", str(out),
                 "--trainable", "all", "--epochs", "3", "--lr", "5e-3", "--threads", "1", "--no-progress",
                 "--json"]) == 0
    capsys.readouterr()
    int8, int4 = bench_accuracy(str(out))
    assert int8.reference == int4.reference >= 90.0  # bf16 accuracy, in percent
    assert 0.0 <= int8.ours <= 100.0 and 0.0 <= int4.ours <= 100.0
    assert int8.target == pytest.approx((int8.reference - 0.5) / int8.reference)
    # The same classifier through the command line, quantized, predicts as well.
    assert main(["classify", "predict", "--model", str(out), "--quantize", "int8", "--json", "so superb",
                 "it was broken"]) == 0
    labels = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert labels == ["yes", "no"]


def test_bench_quant_json_quality_only(run_dir, tmp_path, capsys, monkeypatch):
    # --skip-speed with --run and a classifier folder: no training, no 124M model.
    import gptlab.bench.quant as quant

    monkeypatch.setattr(quant, "bench_accuracy", lambda d: [])
    assert main(["bench", "quant", "--skip-speed", "--run", str(run_dir), "--classifier", "unused", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in report["results"]] == ["int8 perplexity vs bf16", "int4 perplexity vs bf16"]
    assert report["setup"]["families"] == ["gpt2"] and all(r["reference"] > 1 for r in report["results"])
