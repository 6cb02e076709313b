"""Causal multi-head self-attention, in two interchangeable forms.

``explicit_attention`` is the book's chapter 3 written out: scores, causal mask, softmax, dropout,
weighted sum. ``CausalSelfAttention`` uses torch's fused ``scaled_dot_product_attention`` by default,
which computes the same function without materialising the T x T score matrix; a test checks that
both agree.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.config import GPTConfig

if TYPE_CHECKING:
    from gptlab.model.kv_cache import KVCache


def build_attention_mask(
    n_new: int, n_past: int, attention_mask: torch.Tensor | None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor | None, bool]:
    """The mask for ``n_new`` queries that follow ``n_past`` cached positions.

    Returns ``(mask, is_causal)``: either a boolean mask (True = may attend) broadcastable to
    ``[B, heads, n_new, n_past + n_new]``, or ``None`` with ``is_causal`` telling whether the plain
    causal pattern applies. The common cases get no mask tensor at all, which lets SDPA pick its
    fastest kernel: a fresh prompt without padding is ``is_causal``; one new token without padding
    may look at everything, so it needs no mask.

    ``attention_mask`` is ``[B, n_past + n_new]`` with 1 for real tokens and 0 for (left) padding.
    """
    n_total = n_past + n_new
    if attention_mask is None:
        if n_new == 1:
            return None, False
        if n_past == 0:
            return None, True
    # Query i (absolute position n_past + i) sees keys 0 .. n_past + i.
    causal = torch.ones(n_new, n_total, dtype=torch.bool, device=device).tril(diagonal=n_past)
    if attention_mask is None:
        return causal, False
    keep = attention_mask.to(torch.bool)[:, None, None, :]  # [B, 1, 1, n_total]
    # A padding query would see no key at all and softmax would give NaN; let every query see itself.
    # Padding outputs are never read by real tokens, so this changes nothing that matters.
    self_seen = torch.eye(n_new, n_total, dtype=torch.bool, device=device).roll(n_past, dims=1)
    return (causal & keep) | self_seen, False


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention written out step by step (the readable reference for SDPA).

    ``q`` is ``[B, H, Tq, D]``, ``k`` and ``v`` are ``[B, H, Tk, D]``; returns ``[B, H, Tq, D]``.
    """
    n_new, n_total = q.size(-2), k.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # [B, H, Tq, Tk]
    if is_causal:
        mask = torch.ones(n_new, n_total, dtype=torch.bool, device=q.device).tril(diagonal=n_total - n_new)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # Softmax in float32 so that bf16 models keep a well-normalised distribution.
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused query/key/value projection.

    The fused ``qkv`` layer is the book's ``W_query``, ``W_key`` and ``W_value`` stacked into one
    matrix (the same layout as GPT-2's ``c_attn``): one matmul instead of three.
    """

    def __init__(self, cfg: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.dropout_p = cfg.drop_rate  # a probability for SDPA, not a module: see gptlab.model.dropout
        self.impl = cfg.attn_impl
        self.layer_idx = layer_idx  # which slot of a KVCache this layer uses
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``x`` is ``[B, T, emb_dim]``; ``mask``/``is_causal`` come from :func:`build_attention_mask`."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, T, C] -> [B, H, T, D]
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.impl == "explicit" or T == 1:
            # One new query (a decode step): SDPA's CPU kernels are tuned for long queries and are
            # several times slower here, in bf16 especially; two small matmuls are the fast path.
            y = explicit_attention(q, k, v, mask, is_causal, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.out_proj(y)
