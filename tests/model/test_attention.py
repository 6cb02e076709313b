"""Attention: the explicit reference against hand-computed values, and SDPA against the reference."""

from __future__ import annotations

import math

import torch

from gptlab.model import GPT, GPTConfig
from gptlab.model.attention import build_attention_mask, explicit_attention


def test_equal_scores_give_the_running_mean_of_values():
    # q = 0 makes every score equal, so causal attention averages the values seen so far.
    v = torch.arange(12.0).view(1, 1, 4, 3)
    q = torch.zeros(1, 1, 4, 3)
    k = torch.randn(1, 1, 4, 3)
    out = explicit_attention(q, k, v, None, is_causal=True)
    expected = torch.stack([v[0, 0, : i + 1].mean(0) for i in range(4)]).view(1, 1, 4, 3)
    torch.testing.assert_close(out, expected)


def test_two_token_softmax_by_hand():
    q = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    v = torch.tensor([[[[1.0, 10.0], [3.0, 30.0]]]])
    out = explicit_attention(q, k, v, None, is_causal=True)
    # Row 0 sees key 0 only. Row 1 scores (0, 2)/sqrt(2) -> softmax weights by hand.
    s = 2 / math.sqrt(2)
    w1 = math.exp(s) / (1 + math.exp(s))
    expected = torch.tensor([[[[1.0, 10.0], [1 * (1 - w1) + 3 * w1, 10 * (1 - w1) + 30 * w1]]]])
    torch.testing.assert_close(out, expected)


def test_sdpa_matches_explicit_for_every_mask_kind():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(explicit_attention(q, k, v, None, True), sdpa(q, k, v, is_causal=True))
    # Cached case: 5 new queries after 4 cached keys, with left padding in row 0.
    k2, v2 = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    pad = torch.ones(2, 9, dtype=torch.long)
    pad[0, :2] = 0
    mask, is_causal = build_attention_mask(5, 4, pad)
    assert not is_causal and mask.shape == (2, 1, 5, 9)
    torch.testing.assert_close(explicit_attention(q, k2, v2, mask, False), sdpa(q, k2, v2, attn_mask=mask))


def test_mask_pattern_by_hand():
    mask, _ = build_attention_mask(2, 1, torch.tensor([[0, 1, 1]]))
    # Query at position 1 sees keys 1 (key 0 is padding); query at position 2 sees keys 1, 2.
    assert mask[0, 0].tolist() == [[False, True, False], [False, True, True]]
    assert build_attention_mask(1, 7, None) == (None, False)  # one new token sees everything
    assert build_attention_mask(6, 0, None) == (None, True)


def test_models_with_either_attention_agree():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    sdpa_model = GPT(cfg).eval()
    explicit_model = GPT(cfg.replace(attn_impl="explicit")).eval()
    explicit_model.load_state_dict(sdpa_model.state_dict())
    ids = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(sdpa_model(ids), explicit_model(ids), atol=1e-5, rtol=1e-5)
