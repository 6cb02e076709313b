"""The published presets are exactly the models they name.

Two independent checks per preset: (1) transformers, given :func:`config_to_hf` of the preset, builds a
model with the same parameter count and the same tensor names and shapes as ``GPT(cfg)``; (2) the
preset's numbers equal the published ``config.json`` on the Hugging Face hub (copied below), and the
counts the model cards quote. Everything is built on the meta device: no memory, a second or so each.
"""

from __future__ import annotations

import pytest
import torch

from gptlab.model import GPT, PRESETS
from gptlab.model.hf import config_from_hf, config_to_hf, hf_state_dict

transformers = pytest.importorskip("transformers")

# The fields of each model's config.json on the hub (main branch), as published: hidden_size,
# intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, vocab_size,
# max_position_embeddings, rope_theta, rms_norm_eps, tie_word_embeddings, model_type.
_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rope_theta",
           "rms_norm_eps", "tie_word_embeddings", "model_type")
HUB_CONFIGS = {
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 64, 128256, 131072, 500000.0, 1e-5, True, "llama"),
    "llama-3.2-3b": (3072, 8192, 28, 24, 8, 128, 128256, 131072, 500000.0, 1e-5, True, "llama"),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128, 128256, 131072, 500000.0, 1e-5, False, "llama"),
    "qwen3-0.6b": (1024, 3072, 28, 16, 8, 128, 151936, 40960, 1000000.0, 1e-6, True, "qwen3"),
    "qwen3-1.7b": (2048, 6144, 28, 16, 8, 128, 151936, 40960, 1000000.0, 1e-6, True, "qwen3"),
    "qwen3-4b": (2560, 9728, 36, 32, 8, 128, 151936, 40960, 1000000.0, 1e-6, True, "qwen3"),
    "qwen3-8b": (4096, 12288, 36, 32, 8, 128, 151936, 40960, 1000000.0, 1e-6, False, "qwen3"),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 64, 151936, 32768, 1000000.0, 1e-6, True, "qwen2"),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 128, 151936, 131072, 1000000.0, 1e-6, True, "qwen2"),
    "smollm2-135m": (576, 1536, 30, 9, 3, 64, 49152, 8192, 100000.0, 1e-5, True, "llama"),
    "smollm2-360m": (960, 2560, 32, 15, 5, 64, 49152, 8192, 100000.0, 1e-5, True, "llama"),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 64, 49152, 8192, 130000.0, 1e-5, True, "llama"),
}
# Llama 3.1 / 3.2 extend their 8,192 trained positions with the "llama3" RoPE scaling.
_LLAMA3_SCALING = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
HUB_ROPE_SCALING = {"llama-3.2-1b": {**_LLAMA3_SCALING, "factor": 32.0},
                    "llama-3.2-3b": {**_LLAMA3_SCALING, "factor": 32.0},
                    "llama-3.1-8b": {**_LLAMA3_SCALING, "factor": 8.0}}
# Parameter counts the hub shows for the checkpoints (tied embeddings counted once).
PUBLISHED_COUNTS = {
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248,
    "qwen3-0.6b": 596_049_920,
    "qwen2.5-0.5b": 494_032_768,
    "smollm2-135m": 134_515_008,
}


def test_every_published_preset_is_listed():
    """A published preset added to config.py without a row here would go unchecked."""
    trained_here = {"llama-nano", "llama-micro", "llama-mini"}  # gptlab's own small shapes, nothing published
    modern = {name for name, cfg in PRESETS.items() if cfg.family == "llama"} - trained_here
    assert modern == set(HUB_CONFIGS)


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_preset_matches_the_hub_config(name):
    cfg = PRESETS[name]
    hf = config_to_hf(cfg, torch.bfloat16)
    assert {f: hf[f] for f in _FIELDS} == dict(zip(_FIELDS, HUB_CONFIGS[name]))
    assert hf["rope_scaling"] == HUB_ROPE_SCALING.get(name)
    # The published config reads back into the very same preset.
    published = dict(zip(_FIELDS, HUB_CONFIGS[name]), rope_scaling=HUB_ROPE_SCALING.get(name),
                     hidden_act="silu", architectures=hf["architectures"])
    # (head_size is None where it equals hidden_size / heads; the preset may spell it out.)
    read_back = config_from_hf(published)
    assert read_back.replace(head_size=read_back.head_dim) == cfg.replace(head_size=cfg.head_dim)


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_preset_builds_the_same_model_as_transformers(name):
    cfg = PRESETS[name]
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(cfg, torch.bfloat16))
    with torch.device("meta"):
        hf_model = transformers.AutoModelForCausalLM.from_config(hf_config)
        model = GPT(cfg)
    assert type(hf_model).__name__ == hf_config.architectures[0]
    assert model.num_parameters() == hf_model.num_parameters()
    ours = {key: tuple(t.shape) for key, t in hf_state_dict(model)}
    theirs = {key: tuple(t.shape) for key, t in hf_model.state_dict().items()}
    if cfg.tie_weights:
        # transformers lists the tied head under its own name too; hf_state_dict leaves it out.
        assert theirs.pop("lm_head.weight") == theirs["model.embed_tokens.weight"]
    assert ours == theirs
    if name in PUBLISHED_COUNTS:
        assert model.num_parameters() == PUBLISHED_COUNTS[name]
