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
from gptlab.model.linear import Linear
from gptlab.model.norm import RMSNorm
from gptlab.model.rope import apply_rope

if TYPE_CHECKING:
    from gptlab.model.kv_cache import LayerCache


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding gets position 0).

    Absolute position embeddings must not count padding, or a padded prompt would be embedded at
    different positions than the same prompt alone (``transformers`` does the same).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


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

    ``q`` is ``[B, H, Tq, D]``, ``k`` and ``v`` are ``[B, Hkv, Tk, D]`` with ``H`` a multiple of ``Hkv``
    (grouped-query attention: each key/value head serves ``H / Hkv`` query heads); returns ``[B, H, Tq, D]``.
    """
    B, H, n_new, D = q.shape
    n_kv, n_total = k.size(1), k.size(-2)
    group = H // n_kv
    # Grouped queries: view the query heads that share a key/value head as extra query rows of that
    # head ([B, Hkv, group * Tq, D]), so each key and value is read once, never copied per query head.
    q = q.reshape(B, n_kv, group * n_new, D)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # [B, Hkv, group * Tq, Tk]
    scores = scores.view(B, n_kv, group, n_new, n_total)
    if is_causal:
        mask = torch.ones(n_new, n_total, dtype=torch.bool, device=q.device).tril(diagonal=n_total - n_new)
    if mask is not None:
        if mask.dim() == 4:  # [B or 1, 1, Tq, Tk]: the head dimension becomes (Hkv, group)
            mask = mask.unsqueeze(2)
        scores = scores.masked_fill(~mask, float("-inf"))
    # Softmax in float32 so that bf16 models keep a well-normalised distribution.
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    out = weights.view(B, n_kv, group * n_new, n_total) @ v  # [B, Hkv, group * Tq, D]
    return out.view(B, H, n_new, D)


class CausalSelfAttention(nn.Module):
    """Causal self-attention: multi-head (GPT-2) or grouped-query (Llama, Qwen), optionally rotary.

    GPT-2's layout has one fused ``qkv`` layer: the book's ``W_query``, ``W_key`` and ``W_value`` stacked
    into one matrix (GPT-2's ``c_attn``), one matmul instead of three. The modern layout has them apart
    (``q_proj``, ``k_proj``, ``v_proj``, as its checkpoints do), with fewer key/value heads than query
    heads, rotary embeddings applied to queries and keys, and in Qwen3 an RMSNorm on each head's
    queries and keys first.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.q_dim, self.kv_dim = cfg.q_dim, cfg.kv_dim
        self.dropout_p = cfg.drop_rate  # a probability for SDPA, not a module: see gptlab.model.dropout
        self.impl = cfg.attn_impl
        if cfg.fused_qkv:
            self.qkv = Linear(cfg.emb_dim, self.q_dim + 2 * self.kv_dim, bias=cfg.qkv_bias)
        else:
            self.q_proj = Linear(cfg.emb_dim, self.q_dim, bias=cfg.qkv_bias)
            self.k_proj = Linear(cfg.emb_dim, self.kv_dim, bias=cfg.qkv_bias)
            self.v_proj = Linear(cfg.emb_dim, self.kv_dim, bias=cfg.qkv_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=cfg.layer_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=cfg.layer_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.out_proj = Linear(self.q_dim, cfg.emb_dim, bias=cfg.proj_bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
        kv_cache: LayerCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x`` is ``[B, T, emb_dim]``; ``mask``/``is_causal`` come from :func:`build_attention_mask`;
        ``kv_cache`` is this layer's part of a cache (:meth:`gptlab.model.KVCache.layer`);
        ``rope`` is ``(cos, sin)`` from :func:`gptlab.model.rope.rope_cos_sin` for rotary models."""
        B, T, _ = x.shape
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split((self.q_dim, self.kv_dim, self.kv_dim), dim=2)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        # [B, T, heads * D] -> [B, heads, T, D]
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out_dtype = q.dtype
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
            q = q.to(k.dtype)  # a bf16 model may keep a float32 cache (see kv_cache.cache_dtype)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.impl == "explicit" or T == 1:
            # One new query (a decode step): SDPA's CPU kernels are tuned for long queries and are
            # several times slower here, in bf16 especially; two small matmuls are the fast path.
            y = explicit_attention(q, k, v, mask, is_causal, dropout_p)
        else:
            if self.n_kv_heads != self.n_heads:
                # Prefill and training are compute-bound: repeating the shared heads costs little
                # and keeps SDPA on its fused kernels.
                group = self.n_heads // self.n_kv_heads
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, self.q_dim).to(out_dtype)
        return self.out_proj(y)
