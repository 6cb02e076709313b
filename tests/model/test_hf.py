"""Parity with transformers' GPT2LMHeadModel: loading, logits, greedy generation, export, errors."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig


def _ids(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=g)


def test_logits_match_transformers(hf_checkpoint):
    folder, hf = hf_checkpoint
    ours = GPT.from_pretrained(folder)
    assert not ours.training
    ids = _ids(hf, 3, hf.config.n_positions)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_config_read_from_checkpoint(hf_checkpoint):
    folder, hf = hf_checkpoint
    cfg = GPT.from_pretrained(folder).cfg
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers) == (
        hf.config.vocab_size, hf.config.n_positions, hf.config.n_embd, hf.config.n_head, hf.config.n_layer
    )
    assert cfg.layer_norm_eps == hf.config.layer_norm_epsilon
    assert cfg.qkv_bias and cfg.tie_weights


def test_tied_head_shares_the_embedding(hf_checkpoint):
    folder, _ = hf_checkpoint
    ours = GPT.from_pretrained(folder)
    assert ours.out_head.weight is ours.tok_emb.weight


def test_greedy_generation_matches_transformers(hf_checkpoint):
    folder, hf = hf_checkpoint
    ours = GPT.from_pretrained(folder)
    prompt = _ids(hf, 1, 5, seed=1)
    n = hf.config.n_positions - 5  # up to the window's end
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                           pad_token_id=0)
    assert expected.shape[1] == hf.config.n_positions
    assert torch.equal(ours.generate(prompt, n), expected)


def test_batched_padded_generation_matches_transformers(hf_checkpoint):
    folder, hf = hf_checkpoint
    ours = GPT.from_pretrained(folder)
    prompt = _ids(hf, 3, 7, seed=2)
    mask = torch.ones_like(prompt)
    mask[0, :4] = 0
    mask[2, :1] = 0
    prompt = prompt.masked_fill(mask == 0, 0)
    expected = hf.generate(prompt, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 12, attention_mask=mask), expected)


def test_export_loads_into_transformers_with_same_logits(hf_checkpoint, tmp_path):
    GPT2LMHeadModel = pytest.importorskip("transformers").GPT2LMHeadModel  # the reference

    folder, hf = hf_checkpoint
    ours = GPT.from_pretrained(folder)
    ours.save_pretrained(tmp_path)
    back = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = _ids(hf, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ours(ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("qkv_bias,tie", [(False, False), (True, False), (False, True)])
def test_round_trip_of_a_gptlab_model(tmp_path, qkv_bias, tie):
    """A model gptlab trains (book layout: no qkv bias, untied) survives save -> transformers -> load."""
    GPT2LMHeadModel = pytest.importorskip("transformers").GPT2LMHeadModel  # the reference

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=2, n_layers=2, qkv_bias=qkv_bias, tie_weights=tie)
    model = GPT(cfg).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 97, (2, 16))
    back = GPT.from_pretrained(tmp_path)
    assert back.cfg == cfg
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(ids)
        torch.testing.assert_close(back(ids), expected, atol=0, rtol=0)
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=0)
    assert (back.out_head.weight is back.tok_emb.weight) == tie


def test_bf16_loading(hf_checkpoint):
    folder, hf = hf_checkpoint
    ours = GPT.from_pretrained(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    ids = _ids(hf, 1, 12)
    with torch.no_grad():
        got = ours(ids).float()
        expected = hf(ids).logits
    # bf16 keeps ~3 significant digits; the logits must still be the same function.
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


def test_pytorch_bin_with_mask_buffers(tmp_path, hf_model_factory):
    """The old pickle format, with the attn.bias / attn.masked_bias buffers old checkpoints carry."""
    hf = hf_model_factory("prefixed", seed=3)
    state = {k: v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    n_pos = hf.config.n_positions
    for i in range(hf.config.n_layer):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    ids = _ids(hf, 2, 10)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ errors


@pytest.fixture
def checkpoint_copy(tmp_path, hf_model_factory):
    hf = hf_model_factory("prefixed", seed=4)
    hf.save_pretrained(tmp_path)
    return tmp_path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_shape_mismatch_names_tensor_and_shapes(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["n_embd"] = 32
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptlabError) as exc:
        GPT.from_pretrained(checkpoint_copy)
    msg = _one_line(exc)
    assert "transformer.wte.weight" in msg and "[311, 64]" in msg and "[311, 32]" in msg


def test_truncated_file_names_the_file(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(GptlabError) as exc:
        GPT.from_pretrained(checkpoint_copy)
    msg = _one_line(exc)
    assert str(path) in msg and "truncated" in msg


def test_corrupt_header_names_the_file(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + n] = b"{" * n
    path.write_bytes(bytes(data))
    with pytest.raises(GptlabError) as exc:
        GPT.from_pretrained(checkpoint_copy)
    assert str(path) in _one_line(exc)


def test_corrupt_pytorch_bin_names_the_file(checkpoint_copy):
    (checkpoint_copy / "model.safetensors").unlink()
    (checkpoint_copy / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(GptlabError) as exc:
        GPT.from_pretrained(checkpoint_copy)
    assert "pytorch_model.bin" in _one_line(exc)


def test_missing_and_unexpected_tensors(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    state = load_file(path)
    state["transformer.h.9.mlp.c_fc.weight"] = torch.zeros(1)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(GptlabError, match="unexpected tensor transformer.h.9.mlp.c_fc.weight"):
        GPT.from_pretrained(checkpoint_copy)
    del state["transformer.h.9.mlp.c_fc.weight"]
    del state["transformer.h.1.ln_2.bias"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(GptlabError, match=r"missing tensor h\.1\.ln_2\.bias"):
        GPT.from_pretrained(checkpoint_copy)


def test_untied_config_without_head_is_an_error(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptlabError, match="lm_head.weight"):
        GPT.from_pretrained(checkpoint_copy)


def test_unsupported_config_and_missing_files(checkpoint_copy, tmp_path_factory):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["activation_function"] = "relu"
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptlabError, match="activation_function 'relu'"):
        GPT.from_pretrained(checkpoint_copy)
    empty = tmp_path_factory.mktemp("empty")
    config["activation_function"] = "gelu_new"
    (empty / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptlabError, match="no model.safetensors, model.safetensors.index.json or pytorch_model.bin"):
        GPT.from_pretrained(empty)
    with pytest.raises(GptlabError, match="not a folder with config.json"):
        GPT.from_pretrained(tmp_path_factory.mktemp("x") / "does-not-exist")


def test_exact_gelu_round_trips_through_transformers(tmp_path):
    """activation="gelu" (exact erf) exports as HF's "gelu" and matches transformers' logits both ways."""
    GPT2LMHeadModel = pytest.importorskip("transformers").GPT2LMHeadModel  # the reference

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, context_length=32, emb_dim=48, n_heads=4, n_layers=2, qkv_bias=True,
                    tie_weights=True, activation="gelu")
    ours = GPT(cfg).eval()
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu"
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)
        back = GPT.from_pretrained(tmp_path)
        assert back.cfg.activation == "gelu"
        torch.testing.assert_close(back(ids), hf(ids).logits, atol=1e-4, rtol=0)
    # The tanh form is a different function: the same weights must not give the same logits.
    tanh = GPT(cfg.replace(activation="gelu_tanh")).eval()
    tanh.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert not torch.allclose(tanh(ids), ours(ids), atol=1e-6)
