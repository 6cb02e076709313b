"""Parity with transformers' Llama, Qwen2 and Qwen3 on random-weight checkpoints it writes offline.

Each case is a real ``*ForCausalLM`` built from a small config, saved with ``save_pretrained`` and read
by gptlab: logits (fp32, within 1e-4), greedy generation with and without the KV cache, left-padded
batches, and the folder gptlab exports loaded back by transformers.
"""

from __future__ import annotations

import json

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.hf import config_to_hf

transformers = pytest.importorskip("transformers")

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}

# (case id, transformers config class, fields): GQA 2:1 and 4:1, MQA, RoPE with and without Llama 3
# scaling, Qwen2's biases, Qwen3's q/k norms and head_dim apart from the width, tied and untied heads.
CASES = {
    "llama-gqa2-llama3rope-untied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                                         rope_scaling=LLAMA3_SCALING, rope_theta=500000.0)),
    "llama-gqa4-tied": ("LlamaConfig", dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mqa-bias": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=1, attention_bias=True,
                                           mlp_bias=True)),
    "llama-mha-linear-rope": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4,
                                                  rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2-gqa2-tied": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                            rope_theta=1000000.0)),
    "qwen2-mqa-untied": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=1)),
    "qwen3-gqa4-headdim-tied": ("Qwen3Config", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                                                    tie_word_embeddings=True)),
    "qwen3-gqa2-untied": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
}


def _write(tmp_path, case: str, seed: int = 0):
    cls_name, fields = CASES[case]
    config = getattr(transformers, cls_name)(
        vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2, max_position_embeddings=48,
        rms_norm_eps=1e-6, **fields,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random norms and biases too, so that a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    folder = tmp_path / case
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(params=sorted(CASES))
def checkpoint(request, tmp_path):
    return _write(tmp_path, request.param)


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_match_transformers(checkpoint):
    folder, hf = checkpoint
    ours = GPT.from_pretrained(folder)
    ids = _ids(3, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_with_and_without_cache(checkpoint):
    folder, hf = checkpoint
    ours = GPT.from_pretrained(folder)
    prompt = _ids(1, 5, seed=1)
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False,
                           pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 30, use_cache=True), expected)
    assert torch.equal(ours.generate(prompt, 30, use_cache=False), expected)


def test_left_padded_batch_matches_each_prompt_alone(checkpoint):
    folder, _ = checkpoint
    ours = GPT.from_pretrained(folder)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 9, 10, 11, 12], [40]]
    together = ours.generate(prompts, 12)
    alone = [ours.generate([p], 12)[0] for p in prompts]
    assert together == alone


def test_export_loads_back_in_transformers(checkpoint, tmp_path):
    folder, hf = checkpoint
    ours = GPT.from_pretrained(folder)
    out = tmp_path / "exported"
    ours.save_pretrained(out)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(back) is type(hf)
    ids = _ids(2, 20, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)
    # and gptlab reads its own export back to the same config
    assert GPT.from_pretrained(out).cfg == ours.cfg


def test_fused_qkv_model_exports_as_separate_projections(tmp_path):
    folder, hf = _write(tmp_path, "llama-gqa2-llama3rope-untied")
    ours = GPT.from_pretrained(folder)
    fused = GPT(ours.cfg.replace(fused_qkv=True))
    state = ours.state_dict()
    for i in range(ours.cfg.n_layers):
        parts = [state.pop(f"blocks.{i}.att.{p}_proj.weight") for p in "qkv"]
        state[f"blocks.{i}.att.qkv.weight"] = torch.cat(parts)
    fused.load_state_dict(state)
    fused.eval().save_pretrained(tmp_path / "fused")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fused").eval()
    ids = _ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)
    # and the separate q/k/v files load into a fused model
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama"


def test_bf16_checkpoint_loads_in_bf16(tmp_path):
    folder, hf = _write(tmp_path, "qwen3-gqa4-headdim-tied")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    ours = GPT.from_pretrained(tmp_path / "bf16")
    assert ours.tok_emb.weight.dtype == torch.bfloat16
    assert ours.rope_inv_freq.dtype == torch.float32
    ids = _ids(1, 24)
    with torch.no_grad():
        got, expected = ours(ids).float(), hf.to(torch.bfloat16)(ids).logits.float()
    assert (got - expected).abs().max() < 0.1


def test_sharded_checkpoint_loads(tmp_path):
    folder, hf = _write(tmp_path, "llama-gqa4-tied")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ours = GPT.from_pretrained(tmp_path / "sharded")
    ids = _ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_missing_shard_is_one_line(tmp_path):
    folder, hf = _write(tmp_path, "llama-gqa4-tied")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(GptlabError, match=f"shard {shard.name} is named in the index but missing"):
        GPT.from_pretrained(tmp_path / "sharded")


def test_mistral_without_sliding_window_maps_onto_llama(tmp_path):
    config = transformers.MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
                                        sliding_window=None)
    torch.manual_seed(0)
    hf = transformers.MistralForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "m")
    ours = GPT.from_pretrained(tmp_path / "m")
    ids = _ids(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


def _edit_config(folder, **changes):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("changes", "message"), [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None},
     "rope_scaling type 'yarn' is not supported"),
    ({"num_key_value_heads": 3}, r"n_heads \(8\) must be divisible by n_kv_heads \(3\)"),
    ({"head_dim": 8}, "tensor model.layers.0.self_attn.q_proj.weight has shape"),
    ({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]},
     "architecture 'Gemma2ForCausalLM' .* not supported; gptlab reads GPT2LMHeadModel, LlamaForCausalLM"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
])
def test_bad_configs_fail_with_one_line(tmp_path, changes, message):
    folder, _ = _write(tmp_path, "llama-gqa4-tied")
    _edit_config(folder, **changes)
    with pytest.raises(GptlabError, match=message) as info:
        GPT.from_pretrained(folder)
    assert "\n" not in str(info.value)


def test_config_round_trip_and_unexportable_mixtures():
    cfg = GPTConfig(positions="rope", norm="layernorm", fused_qkv=False, n_heads=4, emb_dim=32, n_layers=1,
                    vocab_size=50, context_length=16)
    with pytest.raises(GptlabError, match="cannot be saved as a Llama-family model: it has norm='layernorm'"):
        config_to_hf(cfg, torch.float32)
    with pytest.raises(GptlabError, match="cannot be saved as GPT2LMHeadModel: it has norm='rmsnorm'"):
        config_to_hf(GPTConfig(norm="rmsnorm"), torch.float32)


def test_llama_folder_with_a_broken_tokenizer_is_refused_not_paired_with_gpt2s(tmp_path):
    from gptlab.model import load_model

    folder, _ = _write(tmp_path, "qwen3-gqa2-untied")
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    with pytest.raises(GptlabError, match="tokenizer.json: the BPE model has an empty vocabulary"):
        load_model(folder)
