"""The learning-rate schedule shared by pretraining and fine-tuning."""

from __future__ import annotations

import math

import pytest

from gptlab.train.schedule import lr_at


def test_pretraining_form_is_unchanged():
    """Warmup, then ``floor + 0.5 (peak - floor)(1 + cos)``, then the floor: the trainer's figures rest on it."""
    peak, floor, warm, total = 6e-4, 6e-5, 10, 100
    for step in range(130):
        if step < warm:
            want = peak * (step + 1) / warm
        elif step >= total:
            want = floor
        else:
            progress = (step - warm) / (total - warm)
            want = floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
        assert lr_at(step, peak=peak, warmup_steps=warm, total_steps=total, floor=floor).hex() == want.hex()
    assert lr_at(500, peak=peak, warmup_steps=warm, total_steps=0, floor=floor) == peak  # unknown length


def test_floor_ratio_is_the_same_curve():
    for step in range(120):
        a = lr_at(step, peak=1e-3, warmup_steps=10, total_steps=100, floor=1e-4)
        b = lr_at(step, peak=1e-3, warmup_steps=10, total_steps=100, floor_ratio=0.1)
        assert a == pytest.approx(b, rel=1e-12)
    assert {lr_at(s, peak=1e-3, warmup_steps=0, total_steps=50, floor_ratio=1.0) for s in range(60)} == {1e-3}


def test_floor_is_given_once():
    with pytest.raises(ValueError, match="exactly one"):
        lr_at(0, peak=1.0, warmup_steps=0, total_steps=10)
    with pytest.raises(ValueError, match="exactly one"):
        lr_at(0, peak=1.0, warmup_steps=0, total_steps=10, floor=0.1, floor_ratio=0.1)
