"""Learning-rate schedule: linear warmup, then cosine decay to a floor (GPT-2 / nanoGPT style)."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    peak: float,
    warmup_steps: int,
    total_steps: int,
    floor: float | None = None,
    floor_ratio: float | None = None,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Rises linearly from ``peak / warmup_steps`` to ``peak`` over the warmup, then follows half a cosine
    down to the floor at ``total_steps``, and stays at the floor after that (so a run extended past its
    plan keeps a sane rate). ``total_steps <= 0`` means "unknown length": constant ``peak`` after warmup.

    The floor is given either as a rate, ``floor`` (pretraining's ``min_lr``), or as a share of the peak,
    ``floor_ratio`` (classification: 0.1 for its cosine, 1.0 for a constant rate). The two are computed
    as ``floor + (peak - floor) * c`` and ``peak * (ratio + (1 - ratio) * c)``: the same function, but
    they round differently in the last bit, and each is kept as its recipe's measured figures used it.
    """
    if (floor is None) == (floor_ratio is None):
        raise ValueError("lr_at: give exactly one of floor and floor_ratio")
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if total_steps <= 0:
        return peak
    if step >= total_steps:
        return floor if floor is not None else peak * floor_ratio
    span = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / span
    if floor is not None:
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    return peak * (floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
