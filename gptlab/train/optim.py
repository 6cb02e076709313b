"""AdamW with weight decay on matrices only, fused where the device supports it."""

from __future__ import annotations

import inspect

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: 2-D+ tensors (linear and embedding weights) decay; biases and norm gains do not.

    Decaying a norm gain (LayerNorm's, or the Llama design's RMSNorm and Qwen3's q/k norms) or a bias
    pulls it towards 0, which only hurts; the GPT-2/nanoGPT convention is to decay the matrices alone.
    Grouping by shape rather than by name covers every design: all gains and biases are 1-D. A tied
    output head is one parameter, so it is counted once. Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_adamw(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool = True,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused (one kernel over all tensors) on CPU and CUDA.

    Fused AdamW measured ~8x faster than the foreach version for 124M-sized tensors on this 2-core
    CPU; other devices, or a torch without it, get the foreach implementation. ``fused=False`` keeps
    torch's own choice of implementation (a loop over the tensors on a CPU): the kernels round
    differently, and classification's measured figures were made with torch's default.
    """
    groups = param_groups(model, weight_decay)
    if not fused:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    device_type = next(model.parameters()).device.type
    if device_type in ("cpu", "cuda") and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, ValueError):  # e.g. a dtype the fused kernel does not take
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)
