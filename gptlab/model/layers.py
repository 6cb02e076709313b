"""The transformer block: pre-norm attention and feed-forward sub-layers, each with a residual.

The norm is GPT-2's LayerNorm or the modern RMSNorm, the feed-forward block GPT-2's GELU MLP or the
gated SwiGLU one; the config chooses (see :mod:`gptlab.model.config`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.attention import CausalSelfAttention
from gptlab.model.config import GPTConfig
from gptlab.model.linear import Linear
from gptlab.model.norm import make_norm

if TYPE_CHECKING:
    from gptlab.model.kv_cache import LayerCache


def activation(cfg: GPTConfig, x: torch.Tensor) -> torch.Tensor:
    """The config's non-linearity applied to ``x``."""
    if cfg.activation == "silu":
        return F.silu(x)
    # GPT-2's GELU is the tanh approximation (the book's GELU class); torch has both forms as one kernel.
    return F.gelu(x, approximate="tanh" if cfg.activation == "gelu_tanh" else "none")


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, widening to ``cfg.hidden_dim`` (4 x emb_dim) in between (GPT-2)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = Linear(cfg.emb_dim, cfg.hidden_dim, bias=cfg.mlp_bias)
        self.proj = Linear(cfg.hidden_dim, cfg.emb_dim, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, emb_dim] -> [B, T, emb_dim]``."""
        return self.proj(activation(self.cfg, self.fc(x)))


class GatedFeedForward(nn.Module):
    """``down(act(gate(x)) * up(x))``: SwiGLU with SiLU (Llama, Qwen), GeGLU with GELU.

    The gate decides, value by value, how much of ``up(x)`` passes; with three matrices instead of
    two, the hidden size is about 8/3 of the width instead of 4x for the same weight count.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = Linear(cfg.emb_dim, cfg.hidden_dim, bias=cfg.mlp_bias)
        self.up = Linear(cfg.emb_dim, cfg.hidden_dim, bias=cfg.mlp_bias)
        self.down = Linear(cfg.hidden_dim, cfg.emb_dim, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, emb_dim] -> [B, T, emb_dim]``."""
        return self.down(activation(self.cfg, self.gate(x)) * self.up(x))


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + ff(norm2(x))``, with dropout on each branch (the book's drop_shortcut)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.att = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.ff = GatedFeedForward(cfg) if cfg.mlp == "gated" else FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
        kv_cache: LayerCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One block; arguments as in :meth:`CausalSelfAttention.forward`."""
        x = x + self.drop_shortcut(self.att(self.norm1(x), mask, is_causal, kv_cache, rope))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x
