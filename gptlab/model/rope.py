"""Rotary position embeddings (RoPE), in Hugging Face's "split halves" layout, with Llama 3's scaling.

Instead of adding a position vector to the token embedding, RoPE rotates each query and key: the
head's ``D`` values are read as ``D/2`` pairs, and pair ``i`` of position ``p`` is turned by the angle
``p * inv_freq[i]``. A query at ``p`` and a key at ``s`` then meet at an angle that depends only on
``p - s``, so attention sees relative positions, and a cached key never has to change.

Hugging Face's layout pairs value ``i`` with value ``i + D/2`` (the two halves of the head), not
neighbours ``2i, 2i+1`` as the RoPE paper writes it; checkpoints are trained in this layout, so gptlab
uses it too. The frequencies are ``theta ** (-2i / D)``; Llama 3.1/3.2 stretch the low ones (long
wavelengths) by ``factor`` and blend smoothly between ``low_freq_factor`` and ``high_freq_factor``, which
is how a model trained on 8k tokens reads 128k.
"""

from __future__ import annotations

import math

import torch

from gptlab.model.config import GPTConfig


def inverse_frequencies(cfg: GPTConfig) -> torch.Tensor:
    """The ``head_dim / 2`` rotation speeds (radians per position), float32, scaled as ``cfg.rope_scaling`` says."""
    dim = cfg.head_dim
    # float32 as Hugging Face computes them, so that the angles (and logits) match theirs bit for bit.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (cfg.rope_theta ** exponents)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    # llama3: wavelengths longer than the original context / low_freq_factor are slowed by `factor`;
    # shorter than original / high_freq_factor are kept; in between, a linear blend of the two.
    original = float(scaling["original_max_position_embeddings"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    blend = (original / wavelength - low) / (high - low)
    blended = (1 - blend) * scaled / factor + blend * scaled
    in_between = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(in_between, blended, scaled)


def rope_cos_sin(
    inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of every position's angles, ``[B or 1, 1, T, head_dim]`` in ``dtype``.

    ``position_ids`` is ``[T]`` (shared by the batch) or ``[B, T]`` (left-padded rows count from their
    first real token). The angles are computed in float32 even for a bf16 model: at position 100k a
    bf16 angle would be off by hundreds of radians.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    angles = position_ids[:, :, None].float() * inv_freq.to(position_ids.device)  # [B, T, D/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # both halves of a head turn by the same angles
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, T, D]``: each pair ``(x[i], x[i + D/2])`` turns by its angle."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)  # the pair's perpendicular: (a, b) -> (-b, a)
    return x * cos + rotated * sin
