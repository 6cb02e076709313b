"""Test setup shared by the whole suite.

Tests never touch the network: named data sets resolve to ``../shared/data`` beside the checkout (as in
CI), through ``GPTLAB_DATA_DIR``. Torch uses one thread per test process so that the two pytest-xdist
workers on a 2-core machine do not fight over cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

if not (SHARED_DATA / "the-verdict.txt").is_file():  # pragma: no cover - a broken checkout layout
    raise RuntimeError(f"tests need the shared data folder at {SHARED_DATA} (../shared/data beside the repo)")

os.environ["GPTLAB_DATA_DIR"] = str(SHARED_DATA)
# tiktoken.load copies files it reads into a cache keyed by path; a stale copy could be served later.
os.environ["TIKTOKEN_CACHE_DIR"] = ""

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only folder of data sets (``../shared/data``)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    """tiktoken's GPT-2 encoding, built from the local vocabulary files (no download)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(
        str(SHARED_DATA / "gpt2" / "vocab.bpe"), str(SHARED_DATA / "gpt2" / "encoder.json")
    )
    from tiktoken_ext.openai_public import r50k_pat_str as pattern  # tiktoken's own GPT-2 pattern

    return tiktoken.Encoding(
        "gpt2", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257
    )


def save_tiny_gpt(path: Path, seed: int = 0, **fields) -> str:
    """A tiny random GPT with GPT-2's vocabulary, saved as a Hugging Face folder at ``path``; returns it.

    What fine-tuning and generation tests start from: GPT-2's vocabulary so real text encodes, two
    narrow layers so a step takes milliseconds. ``fields`` override the config (context, widths, ...).
    """
    from gptlab.model import GPT, GPTConfig

    config = dict(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0,
                  qkv_bias=True, tie_weights=True) | fields
    torch.manual_seed(seed)
    GPT(GPTConfig(**config)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gpt_folder():
    """:func:`save_tiny_gpt` as a fixture (the test folders are not an importable package)."""
    return save_tiny_gpt


def save_tiny_llama(path: Path, seed: int = 0, **fields) -> str:
    """A tiny random model of the Llama design (RMSNorm, RoPE, SwiGLU, grouped-query attention, separate
    q/k/v) with GPT-2's vocabulary, saved by gptlab at ``path``; returns it. ``fields`` override the
    config (``qk_norm=True`` makes it Qwen3-like, ``qkv_bias=True`` Qwen2-like)."""
    from gptlab.model import GPT
    from gptlab.model.config import modern

    config = dict(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2,
                  ff_dim=64, tie_weights=True) | fields
    torch.manual_seed(seed)
    GPT(modern(**config)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama_folder():
    """:func:`save_tiny_llama` as a fixture."""
    return save_tiny_llama


# Planes 4-13 (U+40000-U+DFFFF) are reserved: no Unicode version has assigned a character there, so
# every engine gives them one class (unassigned) and one code point in 4,099 stands for them all.
# They are 60% of the code space; the rest is swept whole.
_RESERVED_PLANES = range(0x40000, 0xE0000)


@pytest.fixture(scope="session")
def code_points() -> list[str]:
    """Every Unicode scalar value outside the reserved planes 4-13, and a sample of those planes."""
    return [chr(c) for c in range(0x110000)
            if not 0xD800 <= c < 0xE000 and (c not in _RESERVED_PLANES or c % 4099 == 0)]

