"""Learning-rate schedule: linear warmup, then cosine decay to a floor (GPT-2 / nanoGPT style)."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, floor: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Rises linearly from ``peak / warmup_steps`` to ``peak`` over the warmup, then follows half a cosine
    down to ``floor`` at ``total_steps``, and stays at ``floor`` after that (so a run extended past its
    plan keeps a sane rate). ``total_steps <= 0`` means "unknown length": constant ``peak`` after warmup.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if total_steps <= 0:
        return peak
    if step >= total_steps:
        return floor
    span = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / span
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
