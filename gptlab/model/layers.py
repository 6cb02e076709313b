"""The transformer block: pre-LayerNorm attention and feed-forward sub-layers, each with a residual."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.attention import CausalSelfAttention
from gptlab.model.config import GPTConfig

if TYPE_CHECKING:
    from gptlab.model.kv_cache import KVCache


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, widening to ``cfg.hidden_dim`` (4 x emb_dim) in between."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, cfg.hidden_dim)
        self.proj = nn.Linear(cfg.hidden_dim, cfg.emb_dim)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, emb_dim] -> [B, T, emb_dim]``."""
        # GPT-2's GELU is the tanh approximation (the book's GELU class); torch has both forms as one kernel.
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + ff(norm2(x))``, with dropout on each branch (the book's drop_shortcut)."""

    def __init__(self, cfg: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.att = CausalSelfAttention(cfg, layer_idx)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.ff = FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """One block; arguments as in :meth:`CausalSelfAttention.forward`."""
        x = x + self.drop_shortcut(self.att(self.norm1(x), mask, is_causal, kv_cache))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x
