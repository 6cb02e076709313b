"""``gptlab export`` writes a complete Hugging Face folder: model, tokenizer.json, tokenizer_config.json."""

from __future__ import annotations

import pytest

from gptlab.app import main

transformers = pytest.importorskip("transformers")

SMALL = ["--data", "the-verdict", "--preset", "gpt-nano", "--batch-size", "4", "--block-size", "32",
         "--model-set", "emb_dim=32", "--model-set", "n_heads=2", "--model-set", "n_layers=2",
         "--model-set", "context_length=32", "--eval-batches", "2", "--sample-tokens", "8", "--warmup-steps", "2",
         "--precision", "fp32", "--no-progress", "--max-steps", "2", "--eval-interval", "2"]


def test_run_with_a_trained_bpe_exports_a_complete_folder(tmp_path, shared_data, capsys):
    tok_file = tmp_path / "bpe.json"
    assert main(["train-tokenizer", "--data", "the-verdict", "--vocab-size", "400", "--out", str(tok_file)]) == 0
    run = tmp_path / "run"
    assert main(["pretrain", *SMALL, "--tokenizer", str(tok_file), "--out", str(run)]) == 0
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                      "tokenizer_config.json"]
    fast = transformers.AutoTokenizer.from_pretrained(out)
    from gptlab.tokenizer import load_tokenizer

    ours = load_tokenizer(tok_file)
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    assert fast.encode(text) == ours.encode_ordinary(text)
    assert fast.eos_token == "<|endoftext|>" and fast.model_max_length == 32
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.eos_token_id == ours.eot_id == model.config.bos_token_id
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "I", "--max-new-tokens", "3"]) == 0
