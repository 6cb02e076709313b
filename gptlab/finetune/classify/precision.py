"""Precision of classification: bf16 autocast on the CPU, chosen from the ``--precision`` setting.

Classification runs on the CPU; the rule itself (:func:`gptlab.model.device.use_bf16`) is the trainer's.
"""

from __future__ import annotations

import contextlib

import torch

from gptlab.model import device as _device

_CPU = torch.device("cpu")


def use_bf16(precision: str) -> bool:
    """bf16 autocast: asked for, or ``auto`` on a CPU with fast bf16 matrix products."""
    return _device.use_bf16(precision, _CPU)


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    """A CPU bf16 autocast context, or nothing."""
    return _device.autocast(_CPU, bf16)
