"""A finished run folder is usable: generate from it, export it, load the export in transformers."""

from __future__ import annotations

import pytest
import torch

from gptlab.app import main
from gptlab.errors import GptlabError
from gptlab.train import TrainConfig, pretrain
from gptlab.model.run_folder import checkpoint_dir, load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = TrainConfig(
        data="the-verdict", tokenizer="bpe:300", preset="gpt-nano", batch_size=4, block_size=32,
        model={"emb_dim": 32, "n_heads": 2, "n_layers": 2, "context_length": 32}, eval_batches=2,
        sample_tokens=4, max_steps=6, eval_interval=3, time_budget="", precision="fp32", out=str(out),
    )
    pretrain(cfg, progress=False, log=lambda m: None)
    return out


def test_generate_from_run_dir_matches_library_greedy(run, capsys):
    model, tok = load_run(run)
    prompt = "I had always"
    ids = tok.encode(prompt)
    expected = model.generate(torch.tensor([ids]), 10)[0, len(ids):].tolist()
    assert main(["generate", "--model", str(run), "--prompt", prompt, "--max-new-tokens", "10", "--ignore-eos"]) == 0
    out = capsys.readouterr().out
    assert tok.decode(expected) in out


def test_export_loads_in_transformers_with_the_same_logits(run, tmp_path):
    from transformers import GPT2LMHeadModel

    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    model, tok = load_run(run)
    assert hf.config.eos_token_id == tok.eot_id == 299  # the run's own end-of-text id, not GPT-2's 50256
    x = torch.tensor([tok.encode("I had always thought Jack Gisburn")])
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x), atol=1e-5)


def test_best_and_step_checkpoints(run):
    assert checkpoint_dir(run, "best").name == "best"
    assert checkpoint_dir(run, "3").name == "step-00000003"
    with pytest.raises(GptlabError, match="no checkpoint for step 4"):
        checkpoint_dir(run, "4")


def test_not_a_run_dir(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a gptlab run folder" in capsys.readouterr().err
