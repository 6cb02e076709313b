"""One dropout setting for the whole model: the nn.Dropout layers, the attention's own probability, the config."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab.model import GPT, GPTConfig

CFG = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.3)


def _logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    return out[0] if isinstance(out, tuple) else out


def _train_mode_outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    model.train()
    idx = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return [_logits(model, idx) for _ in range(2)]


def test_instruct_drop_rate_zero_turns_off_attention_dropout_too(tmp_path):
    """``instruct train --drop-rate 0`` on a base trained with dropout: no dropout anywhere, attention included."""
    from gptlab.finetune.instruct.train import InstructConfig, build_task, instruct_train_config

    torch.manual_seed(0)
    GPT(CFG).save_pretrained(tmp_path / "base")
    entries = [{"instruction": "Repeat the word.", "input": w, "output": f"{w} {w}."} for w in ["apple", "river"] * 10]
    (tmp_path / "data.json").write_text(json.dumps(entries))
    icfg = InstructConfig(data=str(tmp_path / "data.json"), model=str(tmp_path / "base"), drop_rate=0.0)
    tcfg = instruct_train_config({"batch_size": 2, "max_steps": 1, "device": "cpu", "out": str(tmp_path / "run")})
    model = build_task(icfg, tcfg, tmp_path / "run", log=lambda m: None).build_model()

    first, second = _train_mode_outputs(model)
    assert torch.equal(first, second), "a train-mode forward pass still drops something"
    assert model.cfg.drop_rate == 0.0
    assert all(block.att.dropout_p == 0.0 for block in model.blocks)


def test_classify_dropout_reaches_attention_too(tmp_path):
    from gptlab.finetune.classify.config import ClassifyConfig
    from gptlab.finetune.classify.train import build_base

    torch.manual_seed(0)
    GPT(CFG).save_pretrained(tmp_path / "base")
    gpt, _, _ = build_base(ClassifyConfig(model=str(tmp_path / "base"), drop_rate=0.0))
    first, second = _train_mode_outputs(gpt)
    assert torch.equal(first, second)
    assert gpt.cfg.drop_rate == 0.0 and all(block.att.dropout_p == 0.0 for block in gpt.blocks)


def test_set_dropout_sets_every_place_and_the_config():
    from gptlab.finetune.classify.model import GPTClassifier
    from gptlab.model import set_dropout

    torch.manual_seed(0)
    model = GPT(CFG)
    first, second = _train_mode_outputs(model)
    assert not torch.equal(first, second)  # the base drops out (so the checks below mean something)

    set_dropout(model, 0.0)
    first, second = _train_mode_outputs(model)
    assert torch.equal(first, second)
    assert model.cfg.drop_rate == 0.0

    # Through a module that holds the GPT (a classifier), to a non-zero rate.
    classifier = GPTClassifier(model, 2, seed=0)
    set_dropout(classifier, 0.25)
    drops = [m.p for m in classifier.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 1 + CFG.n_layers and set(drops) == {0.25}  # after the embeddings, one per block
    assert [block.att.dropout_p for block in model.blocks] == [0.25] * CFG.n_layers
    assert model.cfg.drop_rate == 0.25


@pytest.mark.parametrize("p", [-0.1, 1.0, float("nan")])
def test_set_dropout_refuses_a_probability_outside_0_1(p):
    from gptlab.errors import GptlabError
    from gptlab.model import set_dropout

    model = GPT(CFG)
    with pytest.raises(GptlabError, match="dropout must be at least 0 and below 1"):
        set_dropout(model, p)
    assert model.cfg.drop_rate == 0.3 and model.blocks[0].att.dropout_p == 0.3  # nothing changed
