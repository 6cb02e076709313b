"""GPTConfig, presets and parameter counts (the book's numbers and transformers' count)."""

from __future__ import annotations

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, PRESETS, GPTConfig

# Chapter 4 and its exercises: untied (the book's GPTModel) and tied (minus the output head).
BOOK_COUNTS = {
    "gpt2": (163_009_536, 124_412_160),
    "gpt2-medium": (406_212_608, 354_749_440),
    "gpt2-large": (838_220_800, 773_891_840),
    "gpt2-xl": (1_637_792_000, 1_557_380_800),
}


def _meta_model(cfg: GPTConfig) -> GPT:
    with torch.device("meta"):  # shapes only: counting 1.6B parameters allocates nothing
        return GPT(cfg)


@pytest.mark.parametrize("name", sorted(BOOK_COUNTS))
def test_parameter_counts_match_the_book(name):
    untied, tied = BOOK_COUNTS[name]
    assert _meta_model(PRESETS[name]).num_parameters() == untied
    assert _meta_model(PRESETS[name].replace(tie_weights=True)).num_parameters() == tied


def test_gpt2_layout_count_matches_transformers():
    transformers = pytest.importorskip("transformers")  # the reference; only this test needs it
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    with torch.device("meta"):
        hf = GPT2LMHeadModel(GPT2Config())
    ours = _meta_model(PRESETS["gpt2"].replace(qkv_bias=True, tie_weights=True))
    assert ours.num_parameters() == hf.num_parameters() == 124_439_808
    assert ours.num_parameters(exclude_embeddings=True) == hf.num_parameters(exclude_embeddings=True)


def test_book_default_is_the_124m_config():
    cfg = GPTConfig()
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers, cfg.drop_rate) == (
        50257, 1024, 768, 12, 12, 0.1
    )
    assert not cfg.qkv_bias and not cfg.tie_weights
    assert PRESETS["gpt2"] == cfg


def test_small_presets_are_small_and_ordered():
    sizes = [_meta_model(PRESETS[n]).num_parameters() for n in ("gpt-nano", "gpt-micro", "gpt-mini", "gpt2")]
    assert sizes == sorted(sizes) and sizes[2] < sizes[3] / 3


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"emb_dim": 100, "n_heads": 3}, "emb_dim"),
        ({"n_layers": 0}, "n_layers"),
        ({"drop_rate": 1.5}, "drop_rate"),
        ({"attn_impl": "flash"}, "attn_impl"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(GptlabError, match=field):
        GPTConfig(**changes)


def test_dict_round_trip_and_unknown_fields():
    cfg = GPTConfig.from_preset("gpt-nano", drop_rate=0.0)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(GptlabError, match="emb_size"):
        GPTConfig.from_dict({**cfg.to_dict(), "emb_size": 3})
    with pytest.raises(GptlabError, match="unknown model preset 'gpt5'"):
        GPTConfig.from_preset("gpt5")
