"""The reference for ``gptlab bench pretrain``: nanoGPT's shakespeare-char CPU recipe, re-implemented.

nanoGPT's README trains a character-level model on a CPU with
``--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`` on top of
``config/train_shakespeare_char.py`` (lr 1e-3, min lr 1e-4, warmup 100, beta2 0.99, weight decay 0.1,
grad clip 1, eval every 250 iterations). Its architecture: LayerNorm without bias, no bias in linear
layers, exact GELU, tied input/output embeddings, N(0, 0.02) init with 1/sqrt(2L)-scaled residual
projections, PyTorch SDPA attention; fp32 on the CPU; AdamW with weight decay on >=2-D tensors and
torch's default (non-fused) implementation on the CPU; batches gathered with one slice per row.

This module reproduces that recipe in a plain loop (it is not nanoGPT's code) so the benchmark can
time it on the same machine, on the same token arrays as gptlab, in the same process run. The
validation loss is measured the same way for both sides (see ``gptlab.bench.pretrain``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RecipeConfig:
    """nanoGPT's CPU shakespeare-char settings."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 12
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 250
    seed: int = 1337


class _Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.fc_out = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class RecipeModel(nn.Module):
    """nanoGPT's GPT architecture at the recipe's size."""

    def __init__(self, vocab: int, cfg: RecipeConfig):
        super().__init__()
        self.wte = nn.Embedding(vocab, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(_Block(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.head = nn.Linear(cfg.n_embd, vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def run_recipe(
    train: np.ndarray,
    vocab: int,
    evaluate: Callable[[Callable[[torch.Tensor], torch.Tensor]], float],
    cfg: RecipeConfig | None = None,
    target: float | None = None,
) -> dict:
    """Train with the recipe; ``evaluate(logits_fn)`` gives the validation loss at each evaluation.

    Returns the evaluation history ``[(iter, seconds, val_loss)]`` and the seconds at which the
    validation loss first reached ``target`` (None if it never did). Stops early at the target.
    """
    cfg = cfg or RecipeConfig()
    torch.manual_seed(cfg.seed)
    model = RecipeModel(vocab, cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
    )

    def lr_at(it: int) -> float:
        if it < cfg.warmup_iters:
            return cfg.lr * it / cfg.warmup_iters
        if it > cfg.lr_decay_iters:
            return cfg.min_lr
        ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(train) - cfg.block_size, (cfg.batch_size,))
        x = torch.stack([torch.from_numpy(train[i : i + cfg.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(train[i + 1 : i + 1 + cfg.block_size].astype(np.int64)) for i in ix])
        return x, y

    history, reached = [], None
    start = time.perf_counter()
    x, y = batch()
    for it in range(cfg.max_iters + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(it)
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            model.eval()
            with torch.no_grad():
                val = evaluate(model)
            model.train()
            elapsed = time.perf_counter() - start
            history.append((it, elapsed, val))
            if target is not None and val <= target:
                reached = elapsed
                break
        if it == cfg.max_iters:
            break
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        x, y = batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"history": history, "seconds_to_target": reached, "seconds": time.perf_counter() - start}
