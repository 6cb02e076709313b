"""Classification on the shared schedule and optimizer: the same learning rates and AdamW setup, bit for bit,
as its own copies gave before (the benchmark's figures depend on them)."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.finetune.classify.config import ClassifyConfig
from gptlab.finetune.classify.fit import lr_for_step, make_optimizer
from gptlab.finetune.classify.model import GPTClassifier, set_trainable
from gptlab.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=50, context_length=64, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0)


def old_lr_at(step: int, total: int, lr: float, warmup_frac: float, schedule: str) -> float:
    """Classification's own schedule before it moved onto gptlab.train.schedule, verbatim."""
    warm = int(warmup_frac * total)
    if step < warm:
        return lr * (step + 1) / warm
    if schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    return lr


# 655 = the benchmark recipe's steps per member on the book's SMS split (1,045 texts / batch 8 = 131 steps,
# 5 epochs); the neighbours move where int(warmup_frac * total) rounds.
@pytest.mark.parametrize("total", [1, 2, 7, 10, 131, 650, 654, 655, 656, 660, 1000])
@pytest.mark.parametrize("schedule,warmup_frac,lr", [
    ("cosine", 0.1, 1e-3),  # the benchmark recipe
    ("constant", 0.0, 1e-3),  # the recipe with a constant rate
    ("constant", 0.0, 5e-5),  # the defaults (the book's)
    ("cosine", 0.0, 5e-5),
    ("constant", 0.25, 2e-3),
    ("cosine", 1.0, 3e-4),
])
def test_learning_rates_are_bit_identical(total, schedule, warmup_frac, lr):
    cfg = ClassifyConfig(lr=lr, schedule=schedule, warmup_frac=warmup_frac)
    got = [lr_for_step(cfg, step, total) for step in range(total)]
    want = [old_lr_at(step, total, lr, warmup_frac, schedule) for step in range(total)]
    assert [x.hex() for x in got] == [x.hex() for x in want]


def test_the_recipe_warms_up_then_decays_to_a_tenth():
    cfg = ClassifyConfig(lr=1e-3, schedule="cosine", warmup_frac=0.1)
    rates = [lr_for_step(cfg, step, 655) for step in range(655)]
    assert rates[0] == 1e-3 / 65 and rates[64] == 1e-3 and max(rates) == 1e-3
    assert rates[-1] == pytest.approx(1e-4, rel=1e-4) and rates == sorted(rates[:65]) + sorted(rates[65:], reverse=True)


# The groups classification's own AdamW set-up made (captured from it): matrices decay, the rest not,
# frozen parameters left out, each group in the model's parameter order.
LAST_DECAY = ["gpt.blocks.1.att.qkv.weight", "gpt.blocks.1.att.out_proj.weight", "gpt.blocks.1.ff.fc.weight",
              "gpt.blocks.1.ff.proj.weight", "gpt.out_head.weight"]
LAST_NO_DECAY = ["gpt.blocks.1.norm1.weight", "gpt.blocks.1.norm1.bias", "gpt.blocks.1.att.out_proj.bias",
                 "gpt.blocks.1.norm2.weight", "gpt.blocks.1.norm2.bias", "gpt.blocks.1.ff.fc.bias",
                 "gpt.blocks.1.ff.proj.bias", "gpt.final_norm.weight", "gpt.final_norm.bias", "gpt.out_head.bias"]


@pytest.mark.parametrize("scope,want", [
    ("head", [["gpt.out_head.weight"], ["gpt.out_head.bias"]]),
    ("last", [LAST_DECAY, LAST_NO_DECAY]),
])
def test_parameter_groups_are_unchanged(scope, want):
    model = GPTClassifier(GPT(TINY), 3, seed=0)
    set_trainable(model, scope, 1)
    opt = make_optimizer(model, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [[names[id(p)] for p in g["params"]] for g in opt.param_groups] == want
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_all_scope_and_the_language_model_step_cover_every_parameter():
    model = GPTClassifier(GPT(TINY), 3, seed=0)
    set_trainable(model, "all", 1)
    opt = make_optimizer(model, 1e-3, 0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in params if p.dim() >= 2]
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(p) for p in params if p.dim() < 2]
    # The LM adaptation: no weight decay anywhere.
    gpt = GPT(TINY)
    lm_opt = make_optimizer(gpt, 1e-3, weight_decay=0.0)
    assert [g["weight_decay"] for g in lm_opt.param_groups] == [0.0, 0.0]
    assert sum(len(g["params"]) for g in lm_opt.param_groups) == len(list(gpt.parameters()))


def test_adamw_settings_are_torchs_defaults():
    """torch's default AdamW (betas, eps, and its own choice of implementation), as before: not the fused kernel."""
    model = GPTClassifier(GPT(TINY), 3, seed=0)
    opt = make_optimizer(model, 2e-3, 0.1)
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2e-3)
    assert type(opt) is torch.optim.AdamW
    for group in opt.param_groups:
        assert {k: v for k, v in group.items() if k not in ("params", "weight_decay")} == \
               {k: v for k, v in reference.param_groups[0].items() if k not in ("params", "weight_decay")}
