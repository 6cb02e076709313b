"""Device and precision selection, shared by pretraining, fine-tuning and serving.

These live in the model layer (not the trainer) so that classification, instruction tuning and the
server can choose a device without importing the training loop.
"""

from __future__ import annotations

import contextlib

import torch

from gptlab.errors import GptlabError


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA if available, else CPU (MPS only when asked for)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptlabError(f"unknown device {name!r} (expected auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptlabError("device 'cuda' was asked for, but this machine has no usable CUDA GPU")
    return device


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products are fast here: CUDA with bf16, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(cpu, c, lambda: False)() for c in checks)
    return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to run under bf16 autocast: ``bf16``, or ``auto`` where bf16 is fast here (``fp32``: no)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise GptlabError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and fast_bf16(device))


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """A bf16 autocast context for ``device``, or one that does nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
