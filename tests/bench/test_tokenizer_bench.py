"""``gptlab bench tokenizer`` on small corpora: its checks and arithmetic (speed targets are not tested)."""

from __future__ import annotations

import json
import sys

import pytest

from gptlab.bench.tokenizer import format_table, run_tokenizer_bench
from gptlab.app import main


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch):
    # The benchmark pins RAYON_NUM_THREADS for the reference libraries; undo that after each test.
    monkeypatch.setenv("RAYON_NUM_THREADS", "1")


def test_bench_result_is_consistent(shared_data):
    result = run_tokenizer_bench("the-verdict", str(shared_data / "the-verdict.txt"), vocab_size=400, repeats=1)
    enc, tr = result["encode"], result["train"]
    assert enc["identical_ids"] is True and enc["tokens"] == 5145  # GPT-2's count for the-verdict
    assert enc["bytes"] == (shared_data / "the-verdict.txt").stat().st_size
    assert enc["ratio"] == pytest.approx(enc["ours_mb_per_s"] / enc["tiktoken_mb_per_s"], rel=1e-2)
    assert tr["ours_vocab"] == tr["hf_vocab"] == 400
    assert tr["ratio"] == pytest.approx(tr["ours_s"] / tr["hf_s"], rel=1e-2)
    assert enc["pass"] == (enc["ratio"] >= 0.5) and tr["pass"] == (tr["ratio"] <= 3.0)
    # The overall verdict also covers the real models' tokenizers the bench runs by default.
    assert result["pass"] == (enc["pass"] and tr["pass"] and all(m["pass"] for m in result["models"]))
    table = format_table(result)
    assert table.count("PASS") + table.count("FAIL") == 2 + len(result["models"]) and "ids identical to tiktoken: yes" in table


def test_bench_real_model_tokenizers(shared_data):
    result = run_tokenizer_bench("the-verdict", "the-verdict", repeats=1, train=False, models=("llama3", "qwen2"))
    assert [m["model"] for m in result["models"]] == ["llama3", "qwen2"]
    for m in result["models"]:
        assert m["identical_ids"] is True and m["tokens"] in (4941, 4943)  # the ids the test vectors pin down
        assert m["ratio"] == pytest.approx(m["ours_mb_per_s"] / m["tiktoken_mb_per_s"], rel=1e-2)
        assert m["pass"] == (m["ratio"] >= 0.5)
    table = format_table(result)
    assert "(llama3, cold cache)" in table and "qwen2: ids identical to Hugging Face tokenizers: yes" in table


def test_bench_cli_json_skip_train(capsys):
    assert main(["bench", "tokenizer", "--corpus", "the-verdict", "--skip-train", "--repeats", "1", "--json",
                 "--models"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train"] is None and result["encode"]["identical_ids"] is True and result["models"] == []


def test_bench_unknown_model_is_one_clear_error(capsys):
    assert main(["bench", "tokenizer", "--corpus", "the-verdict", "--skip-train", "--models", "gemma"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gemma" in err and "llama3" in err


def test_bench_without_reference_library_is_one_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes "import tokenizers" fail
    code = main(["bench", "tokenizer", "--corpus", "the-verdict", "--repeats", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("gptlab: error: ") and "tokenizers" in err and len(err.splitlines()) == 1


def test_bench_without_target_shows_help(capsys):
    assert main(["bench"]) == 2
    assert "tokenizer" in capsys.readouterr().out
