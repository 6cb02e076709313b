"""Shared fixtures for the model tests: tiny random GPT-2 checkpoints written by ``transformers``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# transformers (the dev extra) is the reference only some model tests compare against: those skip
# without it (through the fixtures below); the rest of tests/model runs anyway.

# Two small configs: different widths/depths/contexts, one saved with the "transformer." prefix
# (GPT2LMHeadModel) and one without (GPT2Model, whose head is tied to the embedding).
HF_CONFIGS = {
    "prefixed": dict(vocab_size=311, n_positions=48, n_embd=64, n_layer=2, n_head=4),
    "bare": dict(vocab_size=257, n_positions=32, n_embd=48, n_layer=3, n_head=3, layer_norm_epsilon=1e-6),
}


def make_hf_model(kind: str, seed: int = 0):
    """A random-weight transformers GPT-2 in eval mode, biases and LayerNorms randomised too."""
    transformers = pytest.importorskip("transformers")
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**HF_CONFIGS[kind], bos_token_id=None, eos_token_id=None)).eval()
    with torch.no_grad():
        # Non-trivial biases and norms, so a wrong mapping of any of them shows in the logits.
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="session")
def hf_model_factory():
    """``make_hf_model(kind, seed)`` as a fixture (test modules here are not an importable package)."""
    return make_hf_model


@pytest.fixture(scope="session", params=sorted(HF_CONFIGS))
def hf_checkpoint(request, tmp_path_factory) -> tuple[Path, object]:
    """``(folder, transformers model)`` for each config; "bare" is saved as GPT2Model (no prefix, no lm_head)."""
    kind = request.param
    model = make_hf_model(kind)
    folder = tmp_path_factory.mktemp(f"hf-{kind}")
    if kind == "bare":
        model.transformer.save_pretrained(folder)
    else:
        model.save_pretrained(folder)
    return folder, model
