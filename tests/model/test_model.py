"""The GPT module: shapes, loss, causality, padding, KV-cache forward, initialisation, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig, KVCache

CFG = GPTConfig(vocab_size=101, context_length=24, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_logits_shape_and_last_only(model):
    ids = torch.randint(0, 101, (2, 7))
    logits = model(ids)
    assert logits.shape == (2, 7, 101)
    torch.testing.assert_close(model(ids, last_only=True), logits[:, -1:])


def test_loss_is_mean_cross_entropy_and_ignores_minus_100(model):
    ids = torch.randint(0, 101, (2, 6))
    targets = torch.randint(0, 101, (2, 6))
    targets[0, :3] = -100
    logits, loss = model(ids, targets)
    keep = targets != -100
    log_probs = torch.log_softmax(logits, -1)
    by_hand = -log_probs[keep].gather(-1, targets[keep][:, None]).mean()
    torch.testing.assert_close(loss, by_hand)


def test_initial_loss_is_near_uniform():
    # GPT-2's small init makes the first predictions nearly uniform: loss ~ ln(vocab) (book ch. 5: ~10.98).
    torch.manual_seed(0)
    m = GPT(CFG.replace(vocab_size=50257, emb_dim=64)).eval()
    ids = torch.randint(0, 50257, (2, 16))
    _, loss = m(ids, torch.randint(0, 50257, (2, 16)))
    assert abs(loss.item() - math.log(50257)) < 0.3


def test_future_tokens_do_not_change_past_logits(model):
    ids = torch.randint(0, 101, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 101
    torch.testing.assert_close(model(ids)[:, :6], model(changed)[:, :6])
    assert not torch.allclose(model(ids)[:, 6:], model(changed)[:, 6:])


def test_left_padding_does_not_change_logits(model):
    ids = torch.randint(1, 101, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(ids), atol=1e-5, rtol=1e-5)


def test_cached_forward_equals_full_forward(model):
    ids = torch.randint(0, 101, (2, 12))
    full = model(ids)
    cache = KVCache.for_model(model, batch_size=2)
    parts = [model(ids[:, :5], kv_cache=cache), model(ids[:, 5:9], kv_cache=cache)]
    parts += [model(ids[:, i : i + 1], kv_cache=cache) for i in range(9, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_is_preallocated_and_reused(model):
    cache = KVCache.for_model(model, batch_size=1)
    buffers = [k.data_ptr() for k in cache.keys]
    model(torch.randint(0, 101, (1, 4)), kv_cache=cache)
    cache.reset()
    model(torch.randint(0, 101, (1, 4)), kv_cache=cache)
    assert [k.data_ptr() for k in cache.keys] == buffers
    assert cache.keys[0].shape == (1, CFG.n_heads, CFG.context_length, CFG.head_dim)


def test_too_long_input_is_a_clear_error(model):
    with pytest.raises(GptlabError, match="context_length 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(GptlabError, match="attention_mask has shape"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))


def test_tied_weights_are_one_tensor():
    m = GPT(CFG.replace(tie_weights=True))
    assert m.out_head.weight is m.tok_emb.weight
    untied = GPT(CFG)
    assert untied.num_parameters() - m.num_parameters() == CFG.vocab_size * CFG.emb_dim


def test_gpt2_initialisation_statistics():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=1000, context_length=64, emb_dim=256, n_heads=4, n_layers=8))
    assert abs(m.tok_emb.weight.std().item() - 0.02) < 0.001
    assert abs(m.blocks[0].ff.fc.weight.std().item() - 0.02) < 0.001
    assert abs(m.blocks[0].ff.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert m.blocks[0].att.qkv.bias is None and torch.all(m.blocks[0].ff.fc.bias == 0)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = GPT(CFG.replace(drop_rate=0.5))
    ids = torch.randint(0, 101, (1, 8))
    m.train()
    assert not torch.equal(m(ids), m(ids))
    m.eval()
    assert torch.equal(m(ids), m(ids))


def test_training_overfits_a_batch():
    torch.manual_seed(0)
    m = GPT(CFG).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    ids = torch.randint(0, 101, (4, 17))
    for _ in range(60):
        _, loss = m(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3  # from ~4.6 (ln 101): the model memorised the batch


def test_bf16_autocast_matches_fp32_closely(model):
    ids = torch.randint(0, 101, (2, 10))
    targets = torch.randint(0, 101, (2, 10))
    _, loss32 = model(ids, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = model(ids, targets)
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.05
    assert abs(F.cross_entropy(model(ids).flatten(0, 1), targets.flatten()).item() - loss32.item()) < 1e-6
