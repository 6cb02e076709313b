"""Muon (gptlab.train.muon): the orthogonalization, the update against torch.optim.Muon, the split of the
parameters between Muon and AdamW, and a pretraining run with it (exact resume, checkpoints, flags)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.run_folder import latest_checkpoint
from gptlab.train import TrainConfig, pretrain, resolve_run_config
from gptlab.train.muon import Muon, MuonWithAdamW, orthogonalize
from gptlab.train.optim import make_optimizer
from run_helpers import losses

SMALL = dict(
    data="the-verdict", tokenizer="char", preset="gpt-nano", batch_size=4, block_size=32,
    model={"emb_dim": 32, "n_heads": 2, "n_layers": 2, "context_length": 32},
    eval_batches=2, sample_tokens=8, warmup_steps=3, time_budget="", precision="fp32", lr=3e-3,
    optimizer="muon",
)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_orthogonalize_keeps_the_singular_vectors_and_flattens_the_spectrum(shape):
    torch.manual_seed(0)
    # A spread-out spectrum (singular values from 0.1 to 10). Five steps multiply a small value by
    # about 3.4^5 ~ 450, so values more than ~1,000 times below the Frobenius norm stay small.
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], dtype=torch.float64))
    k = min(shape)
    s = torch.logspace(-1, 1, k, dtype=torch.float64)
    g = (u[:, :k] * s) @ v[:, :k].T
    o = orthogonalize(g.float()).double()
    assert o.shape == g.shape
    # In the singular bases of g, the result is diagonal (same singular vectors) ...
    inner = u[:, :k].T @ o @ v[:, :k]
    off = inner - torch.diag(torch.diagonal(inner))
    assert off.abs().max() < 2e-3
    # ... with every singular value pushed towards 1: the quintic iteration leaves them in about
    # [0.7, 1.2] (the smallest here started 100 times below the largest).
    sv = torch.diagonal(inner)
    assert sv.min() > 0.6 and sv.max() < 1.25, sv
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.randn(2, 3, 4))


def test_muon_steps_like_torch_muon_with_rms_matching():
    """Our update is torch.optim.Muon's (Nesterov, decoupled decay, match_rms_adamw scale), given bf16."""
    torch.manual_seed(1)
    shapes = [(64, 16), (16, 64), (24, 24)]
    ours = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = Muon(ours, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)
    ref_opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref):
        # bf16 products round differently in the last bits; the steps themselves (~0.02) agree.
        assert torch.allclose(p, q, atol=2e-3, rtol=0), (p - q).abs().max()


def test_muon_in_fp32_is_the_bf16_update_without_its_rounding():
    torch.manual_seed(2)
    p32 = torch.nn.Parameter(torch.randn(40, 20))
    pbf = torch.nn.Parameter(p32.detach().clone())
    start = p32.detach().clone()
    a, b = Muon([p32], lr=0.05, ns_dtype=torch.float32), Muon([pbf], lr=0.05, ns_dtype=torch.bfloat16)
    p32.grad = pbf.grad = torch.randn(40, 20)
    a.step()
    b.step()
    step32, stepbf = p32.detach() - start, pbf.detach() - start
    assert step32.abs().max() > 0.01
    assert torch.allclose(step32, stepbf, atol=0.05 * step32.abs().max().item())


def test_muon_takes_only_matrices():
    with pytest.raises(ValueError, match="only matrices"):
        Muon([torch.nn.Parameter(torch.zeros(4))], lr=0.01)


def test_the_blocks_matrices_go_to_muon_and_everything_else_to_adamw():
    for preset, extra in (("gpt-nano", {}), ("llama-nano", {"tie_weights": False})):
        model = GPT(GPTConfig.from_preset(preset, vocab_size=50, emb_dim=32, n_heads=2, n_layers=2,
                                          context_length=16, **extra))
        opt = make_optimizer(model, "muon", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
        assert isinstance(opt, MuonWithAdamW)
        in_muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
        in_adamw = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
        names = {id(p): n for n, p in model.named_parameters()}
        assert in_muon.isdisjoint(in_adamw)
        assert in_muon | in_adamw == set(names)
        assert {names[i] for i in in_muon} == {n for n, p in model.named_parameters()
                                                if n.startswith("blocks.") and p.dim() == 2}
        # Embeddings and an untied head are matrices too, but stay with AdamW (decayed).
        decayed = {names[id(p)] for p in opt.adamw.param_groups[0]["params"]}
        assert "tok_emb.weight" in decayed
        if extra:
            assert "out_head.weight" in decayed
        # Setting the learning rate through param_groups reaches both parts.
        for group in opt.param_groups:
            group["lr"] = 0.5
        assert all(g["lr"] == 0.5 for g in opt.muon.param_groups + opt.adamw.param_groups)


def test_muon_needs_transformer_blocks():
    with pytest.raises(GptlabError, match="no transformer blocks"):
        make_optimizer(torch.nn.Linear(4, 4), "muon", 1e-3, 0.1, (0.9, 0.99))
    with pytest.raises(GptlabError, match="optimizer must be one of adamw, muon, got 'sgd'"):
        make_optimizer(torch.nn.Linear(4, 4), "sgd", 1e-3, 0.1, (0.9, 0.99))


def test_a_muon_run_learns_and_cannot_switch_optimizer_on_resume(tmp_path):
    # (Exact resume with Muon's state: tests/train/test_trainer.py, for both optimizers.)
    run = tmp_path / "run"
    pretrain(TrainConfig(**SMALL, out=str(run), max_steps=12, eval_interval=4), progress=False, log=lambda m: None)
    vals = [v for _, _, v in losses(run)]
    assert vals[-1] < vals[0] - 0.3, vals
    assert latest_checkpoint(run).step == 12
    with pytest.raises(GptlabError, match="it was trained with optimizer='muon'"):
        resolve_run_config({"optimizer": "adamw"}, None, str(run))


def test_an_adamw_state_is_not_loaded_into_muon():
    model = GPT(GPTConfig.from_preset("gpt-nano", vocab_size=20, emb_dim=16, n_heads=2, n_layers=1, context_length=8))
    adamw = make_optimizer(model, "adamw", 1e-3, 0.1, (0.9, 0.99))
    muon = make_optimizer(model, "muon", 1e-3, 0.1, (0.9, 0.99))
    with pytest.raises(GptlabError, match="not Muon"):
        muon.load_state_dict(adamw.state_dict())


def test_the_optimizer_flag(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "gptlab", "pretrain", "--optimizer", "sgd", "--out",
                          str(tmp_path / "x"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].endswith("optimizer must be one of adamw, muon, got 'sgd'")
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


def test_runs_saved_before_the_setting_existed_resume_with_adamw(tmp_path):
    import json

    run = tmp_path / "old"
    pretrain(TrainConfig(**{**SMALL, "optimizer": "adamw"}, out=str(run), max_steps=2, eval_interval=2),
             progress=False, log=lambda m: None)
    path = run / "config.json"
    saved = json.loads(path.read_text())
    del saved["train"]["optimizer"]  # as written before the optimizer was a setting
    path.write_text(json.dumps(saved))
    cfg, _ = resolve_run_config({"max_steps": 4}, None, str(run))
    assert cfg.optimizer == "adamw"
    assert pretrain(cfg, resume=run, progress=False, log=lambda m: None).step == 4


def test_the_books_recipes_keep_adamw():
    """Muon is the pretraining default; the book's chapter 5 and 7 recipes are AdamW's."""
    from gptlab.finetune.instruct.train import instruct_train_config

    assert TrainConfig().optimizer == "muon"
    assert instruct_train_config({}).optimizer == "adamw"
