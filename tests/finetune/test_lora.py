"""LoRA: the book's parameter count, exactness with B = 0, merge/unmerge, adapter save/load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gptlab.errors import GptlabError
from gptlab.finetune.lora import (
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_state_dict,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from gptlab.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY).eval()


def randomize_b(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


def test_book_count_124m_two_classes_every_linear_r16():
    # The book's appendix E: 2,666,528 trainable parameters (its W_query/W_key/W_value are three layers).
    with torch.device("meta"):
        model = GPT(GPTConfig())  # the book's 124M config
    model.out_head = nn.Linear(768, 2, device="meta")
    assert apply_lora(model, rank=16, alpha=16) == 2_666_528
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 12 * 4 + 1
    assert model.blocks[0].att.qkv.splits == 3


def test_zero_b_equals_base_exactly():
    model = tiny()
    idx = torch.randint(0, 97, (2, 16))
    ref = model(idx)
    apply_lora(model, rank=4, alpha=8)
    assert torch.equal(model(idx), ref)


def test_fused_qkv_slices_are_independent():
    torch.manual_seed(0)
    base = nn.Linear(8, 24)
    layer = LoRALinear(base, rank=2, alpha=2, splits=3)
    with torch.no_grad():
        layer.lora_B[1].fill_(1.0)  # only the key slice gets an update
    x = torch.randn(5, 8)
    diff = layer(x) - base(x)
    assert torch.all(diff[:, :8] == 0) and torch.all(diff[:, 16:] == 0)
    expected = x @ layer.lora_A[1].T @ layer.lora_B[1].T * layer.scaling
    torch.testing.assert_close(diff[:, 8:16], expected)


def test_merge_matches_unmerged_and_unmerge_restores():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=16)
    randomize_b(model)
    idx = torch.randint(0, 97, (2, 16))
    unmerged = model(idx)
    assert not torch.allclose(unmerged, tiny()(idx))  # the adapters do something
    merge_lora(model)
    assert all(m.merged for m in model.modules() if isinstance(m, LoRALinear))
    torch.testing.assert_close(model(idx), unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(idx), unmerged, atol=1e-5, rtol=0)
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=0)


def test_only_adapters_train():
    model = tiny()
    n = apply_lora(model, rank=2, alpha=2, targets=["attn"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n for n in names)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # attn only: qkv (3 slices) and out_proj per block
    assert n == 2 * (3 * (2 * 32 + 2 * 32) + (2 * 32 + 2 * 32))


def test_adapter_round_trip(tmp_path):
    model = tiny()
    apply_lora(model, rank=4, alpha=8)
    randomize_b(model)
    idx = torch.randint(0, 97, (1, 12))
    want = model(idx)
    save_adapter(model, tmp_path / "adapter", base={"model": "tiny"})
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["rank"] == 4 and meta["base"] == {"model": "tiny"}
    fresh = tiny()
    load_adapter(fresh, tmp_path / "adapter")
    assert torch.equal(fresh(idx), want)
    for k, v in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[k], v)


def test_adapter_refuses_other_base(tmp_path):
    model = tiny(seed=0)
    apply_lora(model, rank=2, alpha=2)
    save_adapter(model, tmp_path / "a")
    with pytest.raises(GptlabError, match="different base model"):
        load_adapter(tiny(seed=1), tmp_path / "a")
    with pytest.raises(GptlabError, match="different base model"):
        load_adapter(GPT(TINY.replace(n_layers=3)), tmp_path / "a")


def test_bad_targets_and_rank():
    with pytest.raises(GptlabError, match="match no linear layer"):
        apply_lora(tiny(), rank=2, alpha=2, targets=["nothing.*"])
    with pytest.raises(GptlabError, match="rank"):
        apply_lora(tiny(), rank=0, alpha=2)
