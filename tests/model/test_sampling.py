"""Sampling settings as one value: the same checks and the same tokens as the separate arguments."""

from __future__ import annotations

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.generate import SamplingConfig, sample_next

CFG = GPTConfig(vocab_size=101, context_length=24, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 8]]


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_defaults_are_greedy_and_unfiltered():
    assert SamplingConfig() == SamplingConfig(temperature=0.0, top_k=None, top_p=None, seed=None)


@pytest.mark.parametrize("settings, flags, message", [
    (SamplingConfig(temperature=-0.5), False, "temperature must be a finite number >= 0"),
    (SamplingConfig(temperature=float("nan")), True, "--temperature must be a finite number >= 0"),
    (SamplingConfig(top_k=0), True, "--top-k must be a positive integer, got 0"),
    (SamplingConfig(top_p=1.5), False, "top_p must be in (0, 1], got 1.5"),
])
def test_check_names_the_setting(settings, flags, message):
    with pytest.raises(GptlabError) as info:
        settings.check(flags=flags)
    assert str(info.value).startswith(message)


def test_check_covers_max_new_tokens():
    SamplingConfig(temperature=0.8, top_k=5, top_p=0.9).check(10)
    with pytest.raises(GptlabError, match="--max-new-tokens must be >= 0, got -1"):
        SamplingConfig().check(-1, flags=True)


def test_sample_is_sample_next_with_these_settings():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    settings = SamplingConfig(temperature=0.7, top_k=10, top_p=0.9)
    got = settings.sample(logits, torch.Generator().manual_seed(4))
    assert torch.equal(got, sample_next(logits, 0.7, 10, 0.9, torch.Generator().manual_seed(4)))
    assert torch.equal(SamplingConfig().sample(logits), logits.argmax(dim=-1))


def test_generate_with_a_config_equals_the_keyword_arguments(model):
    settings = SamplingConfig(temperature=0.9, top_k=20, top_p=0.95, seed=7)
    by_keywords = model.generate(PROMPTS, 12, temperature=0.9, top_k=20, top_p=0.95, seed=7)
    assert model.generate(PROMPTS, 12, sampling=settings) == by_keywords
    steps = list(model.stream_generate(PROMPTS, 12, sampling=settings))
    assert torch.stack(steps, dim=1).tolist() == by_keywords
    # A different seed draws other tokens: the config's seed is really used.
    assert model.generate(PROMPTS, 12, sampling=SamplingConfig(0.9, 20, 0.95, seed=8)) != by_keywords


def test_a_config_and_separate_settings_together_are_refused(model):
    with pytest.raises(GptlabError, match="not both"):
        model.generate(PROMPTS, 4, temperature=0.5, sampling=SamplingConfig(temperature=0.5))
    with pytest.raises(GptlabError, match="top_p must be in"):
        model.generate(PROMPTS, 4, sampling=SamplingConfig(temperature=0.5, top_p=0.0))
