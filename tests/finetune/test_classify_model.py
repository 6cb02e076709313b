"""The classifier model: last-real-token prediction, padding invariance, trainable scopes, LoRA count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gptlab.errors import GptlabError
from gptlab.finetune.classify.model import GPTClassifier, pad_batch, set_trainable
from gptlab.finetune.lora import apply_lora
from gptlab.model import GPT, GPTConfig

# GPT-2's shape (vocabulary, context 1024, 12 blocks) at a small width so the test runs fast.
GPT2_SHAPED_SMALL = GPTConfig(emb_dim=64, n_heads=4, n_layers=12, context_length=1024, drop_rate=0.0)


@pytest.fixture(scope="module")
def clf():
    torch.manual_seed(0)
    return GPTClassifier(GPT(GPT2_SHAPED_SMALL), n_classes=2).eval()


def test_padding_to_120_or_1024_gives_identical_logits(clf):
    text = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]  # "The quick brown fox ..." (GPT-2 ids)
    a_ids, a_mask = pad_batch([text], pad_id=50256, length=120)
    b_ids, b_mask = pad_batch([text], pad_id=50256, length=1024)
    with torch.no_grad():
        a, b = clf(a_ids, a_mask), clf(b_ids, b_mask)
        alone = clf(torch.tensor([text]))
    assert torch.equal(a, b)
    assert torch.equal(a, alone)


def test_padding_in_a_batch_with_longer_texts(clf):
    torch.manual_seed(1)
    texts = [torch.randint(0, 50257, (n,)).tolist() for n in (5, 37, 120)]
    ids, mask = pad_batch(texts, pad_id=50256)
    with torch.no_grad():
        batched = clf(ids, mask)
        single = torch.cat([clf(torch.tensor([t])) for t in texts])
        # The logits read the last real token: not the padded end.
        full = clf.gpt(ids)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[0], full[0, 4], atol=1e-5, rtol=0)


def test_left_padding_goes_through_the_mask(clf):
    text = [15496, 11, 995, 0]
    ids = torch.tensor([[50256] * 6 + text])
    mask = torch.tensor([[0] * 6 + [1] * 4])
    with torch.no_grad():
        torch.testing.assert_close(clf(ids, mask), clf(torch.tensor([text])), atol=1e-5, rtol=0)


def test_empty_sequence_is_refused(clf):
    with pytest.raises(GptlabError, match="empty"):
        pad_batch([[1, 2], []], pad_id=0)
    with pytest.raises(GptlabError, match="no real token"):
        clf(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_trainable_scopes():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, context_length=16, emb_dim=8, n_heads=2, n_layers=3, drop_rate=0.0)
    model = GPTClassifier(GPT(cfg), 3)
    head = 8 * 3 + 3
    block = sum(p.numel() for p in model.gpt.blocks[0].parameters())
    norm = 2 * 8
    assert set_trainable(model, "head") == head
    assert set_trainable(model, "last") == head + block + norm
    assert set_trainable(model, "last", last_blocks=2) == head + 2 * block + norm
    assert set_trainable(model, "all") == sum(p.numel() for p in model.parameters())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "gpt.tok_emb.weight" in trained
    set_trainable(model, "last")
    assert not model.gpt.blocks[1].att.qkv.weight.requires_grad and model.gpt.blocks[2].att.qkv.weight.requires_grad
    with pytest.raises(GptlabError, match="last-blocks"):
        set_trainable(model, "last", last_blocks=4)


def test_head_replaces_lm_head_untied():
    gpt = GPT(GPTConfig(vocab_size=50, context_length=16, emb_dim=8, n_heads=2, n_layers=1, tie_weights=True))
    model = GPTClassifier(gpt, 2)
    assert model.gpt.out_head.weight.shape == (2, 8)
    assert model.gpt.out_head.weight is not model.gpt.tok_emb.weight


def test_book_lora_count_on_the_classifier():
    with torch.device("meta"):
        model = GPTClassifier(GPT(GPTConfig()), 2)  # the book's 124M config, 2 classes
    assert apply_lora(model.gpt, rank=16, alpha=16) == 2_666_528
    assert isinstance(model.gpt.out_head.lora_A, nn.Parameter)
