"""Dtype names (as flags and settings give them) to torch dtypes."""

from __future__ import annotations

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model.config import GPTConfig
from gptlab.model.dtypes import parse_dtype
from gptlab.model.memory import estimate_memory


def test_names_to_dtypes():
    assert parse_dtype("float32") is torch.float32
    assert parse_dtype("bfloat16") is torch.bfloat16
    assert parse_dtype("float16") is torch.float16


@pytest.mark.parametrize("name", ["bf16", "Float32", "torch.float32", "", None, ["float32"]])
def test_other_names_are_one_error_naming_the_allowed_values(name):
    with pytest.raises(GptlabError) as info:
        parse_dtype(name)
    assert str(info.value) == f"dtype must be one of float32, bfloat16, float16, got {name!r}"


def test_memory_estimates_use_the_same_names():
    cfg = GPTConfig.from_preset("gpt-nano")
    assert estimate_memory(cfg, "bfloat16").bytes_per_value == 2
    with pytest.raises(GptlabError, match="dtype must be one of"):
        estimate_memory(cfg, "int8")
