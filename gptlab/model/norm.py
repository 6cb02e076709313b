"""Normalisation layers: GPT-2's LayerNorm or the RMSNorm of Llama and Qwen, as the config says."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.config import GPTConfig


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``: LayerNorm without the mean and the bias (Llama, Qwen).

    The statistic is computed in float32 and the result cast back before the weight multiplies it, as
    the reference implementation does; in bf16 the mean of squares would otherwise lose digits.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over the last dimension."""
        normed = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def make_norm(cfg: GPTConfig, dim: int | None = None) -> nn.Module:
    """The config's normalisation layer over ``dim`` values (``emb_dim`` by default)."""
    dim = dim or cfg.emb_dim
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
