"""How much memory a model needs: weights, gradients, AdamW state and the KV cache.

Counts come from the real module built on the meta device (shapes only, nothing allocated), so they
stay right for any config, tied or not. Activations are not included: they depend on batch size,
sequence length and checkpointing, and dominate only for long sequences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from gptlab.model.config import GPTConfig
from gptlab.model.dtypes import parse_dtype


@dataclass
class MemoryEstimate:
    """Byte counts for one config at one dtype, context length and batch size."""

    parameters: int
    parameters_without_embeddings: int
    dtype: str
    bytes_per_value: int
    weights_bytes: int
    gradients_bytes: int
    adamw_bytes: int  # exp_avg + exp_avg_sq, kept in the parameters' dtype by torch.optim.AdamW
    training_bytes: int  # weights + gradients + AdamW (activations not included)
    kv_cache_bytes: int
    context: int
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return asdict(self)


def count_parameters(cfg: GPTConfig) -> tuple[int, int]:
    """``(all, without embeddings)`` distinct parameters of ``GPT(cfg)``, computed without allocating."""
    from gptlab.model.gpt import GPT

    with torch.device("meta"):
        model = GPT(cfg)
    return model.num_parameters(), model.num_parameters(exclude_embeddings=True)


def kv_cache_bytes(cfg: GPTConfig, context: int, batch_size: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a full KV cache: keys and values, every layer, ``batch_size x context`` positions."""
    # Only the key/value heads are cached: grouped-query attention's saving is here.
    return 2 * cfg.n_layers * batch_size * context * cfg.kv_dim * dtype.itemsize


def estimate_memory(
    cfg: GPTConfig, dtype: str = "float32", context: int | None = None, batch_size: int = 1
) -> MemoryEstimate:
    """Memory for weights, gradients, AdamW state and KV cache of ``cfg`` in ``dtype``."""
    torch_dtype = parse_dtype(dtype)
    size = torch_dtype.itemsize
    n_all, n_core = count_parameters(cfg)
    context = context or cfg.context_length
    weights = n_all * size
    return MemoryEstimate(
        parameters=n_all,
        parameters_without_embeddings=n_core,
        dtype=dtype,
        bytes_per_value=size,
        weights_bytes=weights,
        gradients_bytes=weights,
        adamw_bytes=2 * weights,
        training_bytes=4 * weights,
        kv_cache_bytes=kv_cache_bytes(cfg, context, batch_size, torch_dtype),
        context=context,
        batch_size=batch_size,
    )
