"""The model's linear layer: its inference paths give F.linear's product, and are taken only where meant."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gptlab.model.linear as linear_mod
from gptlab.model import GPT
from gptlab.model.config import modern
from gptlab.model.linear import Linear, blockwise_float32_linear, inference_path, linear


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The exact product, in float64, of what the arguments hold."""
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.fixture
def slow_bf16(monkeypatch):
    """As on a CPU without bf16 arithmetic, whatever this one has."""
    monkeypatch.setattr(linear_mod, "slow_bf16_cpu", lambda: True)


# 1 and 3 rows, and 48 and 64, multiply as PyTorch lays it out; 8 and 2 x 5 with the weight as oneDNN's input.
@pytest.mark.parametrize("shape", [(1, 96), (3, 96), (8, 96), (2, 5, 96), (48, 96), (64, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_float32_path_is_f_linear(shape, bias):
    torch.manual_seed(0)
    w, b = torch.randn(70, 96), (torch.randn(70) if bias else None)
    x = torch.randn(*shape)
    with torch.inference_mode():
        assert inference_path(x, w) == ("onednn" if linear_mod._has_onednn() else "torch")
        got = linear(x, w, b)
    assert got.shape == (*shape[:-1], 70) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _reference(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [4, 9, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_weights_converted_block_by_block_give_the_product(slow_bf16, monkeypatch, rows, bias):
    # Blocks of 5 rows of weights: 70 outputs are 14 blocks; 67 end with a short one.
    monkeypatch.setattr(linear_mod, "BLOCK_VALUES", 5 * 96)
    for out_features in (70, 67):
        torch.manual_seed(out_features)
        w = torch.randn(out_features, 96).bfloat16()
        b = torch.randn(out_features).bfloat16() if bias else None
        x = torch.randn(1, rows, 96).bfloat16()
        with torch.inference_mode():
            assert inference_path(x, w) == "blocks"
            got = linear(x, w, b)
        assert got.shape == (1, rows, out_features) and got.dtype == torch.bfloat16
        ref = _reference(x, w, b)
        # Computed in float32 from the bf16 values: only the final rounding to bf16 remains.
        assert ((got.double() - ref).abs() <= ref.abs() * 2**-8 + 1e-6).all()


@pytest.mark.skipif(not linear_mod._has_onednn(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_few_rows_take_the_weight_as_onednns_input(slow_bf16, monkeypatch, dtype):
    """From 4 to 47 rows the product is computed transposed (the fast way there); outside, not."""
    calls = []
    transposed = linear_mod._onednn_transposed
    monkeypatch.setattr(linear_mod, "_onednn_transposed", lambda *a: calls.append(1) or transposed(*a))
    w = torch.randn(40, 32).to(dtype)
    with torch.inference_mode():
        for rows, expected in ((4, True), (47, True), (48, False), (200, False)):
            calls.clear()
            linear(torch.randn(rows, 32).to(dtype), w)
            assert bool(calls) == expected, rows
        if dtype == torch.float32:
            calls.clear()
            linear(torch.randn(1, 32), w)
            assert not calls


def test_the_buffer_serves_inference_mode_and_no_grad_alike(slow_bf16, monkeypatch):
    monkeypatch.setattr(linear_mod._scratch, "buffer", None)
    w, x = torch.randn(40, 32).bfloat16(), torch.randn(6, 32).bfloat16()
    expected = F.linear(x.float(), w.float()).bfloat16()
    with torch.inference_mode():  # the buffer is made here
        torch.testing.assert_close(linear(x, w), expected)
    with torch.no_grad():  # and written to here (evaluation loops use no_grad)
        torch.testing.assert_close(linear(x, w), expected)


def test_each_thread_converts_into_its_own_buffer(slow_bf16, monkeypatch):
    monkeypatch.setattr(linear_mod, "BLOCK_VALUES", 20 * 256)  # 50 blocks a call: many chances to collide
    torch.manual_seed(1)
    weights = [torch.randn(1000, 256).bfloat16() for _ in range(2)]
    x = torch.randn(8, 256).bfloat16()
    with torch.inference_mode():  # each alone first: two threads at once must give the same
        expected = [blockwise_float32_linear(x, w) for w in weights]
    failures = []

    def work(i: int) -> None:
        with torch.inference_mode():
            for _ in range(30):
                if not torch.equal(blockwise_float32_linear(x, weights[i]), expected[i]):
                    failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_training_few_rows_and_compiling_keep_f_linear(slow_bf16, monkeypatch):
    w32, w16 = torch.randn(8, 16), torch.randn(8, 16).bfloat16()
    assert inference_path(torch.randn(4, 16), w32) == "torch"  # gradients are on: training
    with torch.inference_mode():
        assert inference_path(torch.randn(3, 16).bfloat16(), w16) == "torch"  # under MIN_ROWS
        assert inference_path(torch.randn(4, 16).bfloat16(), w16) == "blocks"
        assert inference_path(torch.randn(4, 16), w16) == "torch"  # mixed dtypes: F.linear's error
        assert linear(torch.randn(0, 16), w32).shape == (0, 8)  # an empty batch
        with torch.autocast("cpu", dtype=torch.bfloat16):  # evaluation under bf16 autocast stays bf16
            assert inference_path(torch.randn(4, 16), w32) == "torch"
            assert linear(torch.randn(4, 16), w32).dtype == torch.bfloat16
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert inference_path(torch.randn(4, 16), w32) == "torch"
    monkeypatch.undo()
    with torch.inference_mode():
        monkeypatch.setattr(linear_mod, "slow_bf16_cpu", lambda: False)  # a CPU with AVX512-BF16/AMX
        assert inference_path(torch.randn(8, 16).bfloat16(), w16) == "torch"


def test_gradients_flow_through_linear_as_through_nn_linear():
    torch.manual_seed(2)
    ours, ref = Linear(16, 8), nn.Linear(16, 8)
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(4, 16)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)


@pytest.mark.parametrize("kind", ["gpt2", "qwen3"])
def test_a_bf16_model_at_batch_8_is_as_close_to_float32_as_torchs_bf16_kernel(monkeypatch, kind):
    from gptlab.model import GPTConfig

    torch.manual_seed(3)
    if kind == "gpt2":
        cfg = GPTConfig(vocab_size=300, context_length=32, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0)
    else:
        cfg = modern(vocab_size=300, context_length=32, emb_dim=64, n_heads=4, n_kv_heads=2, head_size=32,
                     ff_dim=160, n_layers=2, qk_norm=True)
    model = GPT(cfg).eval().to(torch.bfloat16)
    exact = GPT(cfg).eval()  # the same bf16 values, computed in float32
    exact.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ids = torch.randint(0, 300, (8, 12))
    with torch.inference_mode():
        expected = exact(ids)
        monkeypatch.setattr(linear_mod, "slow_bf16_cpu", lambda: True)
        converted = model(ids).float()
        monkeypatch.setattr(linear_mod, "slow_bf16_cpu", lambda: False)  # PyTorch's own bf16 products
        plain = model(ids).float()
    err, plain_err = (converted - expected).abs().max(), (plain - expected).abs().max()
    # Both round every activation to bf16; the converted products add no error of their own.
    assert err <= 1.5 * plain_err + 1e-3, (err, plain_err)
