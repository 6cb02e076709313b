"""The model's linear layer: ``nn.Linear``, with faster inference paths on the CPU.

**float32.** ``F.linear`` multiplies with MKL, whose kernels for a few rows are slow on the AMD CPUs
measured (GPT-2's 50,257-row output head: 10.6 ms at 1 row, 30 ms at 8). oneDNN's float32 kernel,
which PyTorch ships for ``torch.compile``, takes 4.9 and 12.7 ms, and is as fast or faster from 1 to
2,048 rows; inference calls it directly.

**bf16.** On a CPU with AVX512-BF16 or AMX, PyTorch multiplies bf16 matrices with oneDNN's bf16 kernels. On
one without (AVX2 machines: most laptops, many AMD servers), it falls back to a loop that takes one
dot product per output value, converting the weights to float32 as it goes. One row of activations
(a decode step at batch 1) streams each weight once and is as fast as the memory allows, but every
further row converts and multiplies every weight again: 8 rows take 8 times as long, and a batch of
8 sequences decodes slower in bf16 than in float32.

:func:`linear` takes another route for several rows at once (batched decoding, every prefill): it
converts a block of weights (16 MB as float32, within the L3 cache) to float32 once and multiplies
all the rows by it with oneDNN's float32 kernel, then the next block. The weights are still read from
memory in bf16, half the bytes of float32, and each is converted once per call instead of once per
row. GPT-2's 768 x 3072 layer at 8 rows: 2.1 ms in bf16, 0.9 ms this way (0.5 ms with float32
weights, which take twice the memory). GPT-2 124M at batch 8 decodes 1.9x faster this way.

Only inference takes these paths (training keeps ``F.linear`` and its gradients), and never under
``torch.compile`` or ``torch.export``, which choose their own kernels.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.device import fast_bf16

# Rows (tokens across the batch) from which converting the weights pays: measured on an AVX2 EPYC,
# 2 rows are faster in PyTorch's bf16 kernel, 4 are faster converted (GPT-2 MLP, 768 x 3072).
MIN_ROWS = 4
# Weights converted at a time: 2**22 float32 values, 16 MB, within the L3 cache. GPT-2 at batch 8,
# against float32 in the same runs: 1 MB blocks 0.55x (per-call overhead), 4 MB 0.80x, 16 MB 0.85-0.88x,
# 32 MB 0.77x, a whole matrix at once 0.72x.
BLOCK_VALUES = 1 << 22

_scratch = threading.local()


@functools.cache
def slow_bf16_cpu() -> bool:
    """Whether this CPU lacks bf16 arithmetic (no AVX512-BF16, no AMX): PyTorch's bf16 products are slow here."""
    return not fast_bf16(torch.device("cpu"))


def inference_path(x: torch.Tensor, weight: torch.Tensor) -> str:
    """Which product :func:`linear` computes for these arguments: ``"onednn"`` (float32),
    ``"blocks"`` (bf16 weights converted block by block), or ``"torch"`` (``F.linear``)."""
    # is_compiling first: under dynamo it is a constant, and nothing after it is traced (a test of a
    # symbolic size would add a guard, and a graph for each way it can go).
    if (torch.compiler.is_compiling() or torch.is_grad_enabled() or x.device.type != "cpu"
            or weight.device.type != "cpu" or x.dtype != weight.dtype or x.numel() == 0
            or torch.is_autocast_enabled("cpu")):  # autocast casts F.linear's arguments, not oneDNN's
        return "torch"
    if x.dtype == torch.float32 and _has_onednn():
        return "onednn"
    if x.dtype == torch.bfloat16 and x.numel() >= MIN_ROWS * x.size(-1) and slow_bf16_cpu():
        return "blocks"
    return "torch"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``, as :func:`torch.nn.functional.linear`; at inference on the CPU, by the
    faster products of the module's docstring."""
    path = inference_path(x, weight)
    if path == "onednn":
        out = _onednn_float32(x.reshape(-1, x.size(-1)), weight, bias)
        return out.view(*x.shape[:-1], weight.size(0))
    if path == "blocks":
        return blockwise_float32_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def _buffer(values: int) -> torch.Tensor:
    """This thread's float32 scratch of at least ``values`` values, kept between calls (a fresh 16 MB
    allocation each call would be a fresh mapping of pages from the system, and page faults)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < values:
        # A normal tensor, even when made under inference_mode: an inference tensor could not be
        # written to later under no_grad.
        with torch.inference_mode(False):
            buffer = _scratch.buffer = torch.empty(values, dtype=torch.float32)
    return buffer


def _onednn_float32(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``rows @ weight.T + bias`` for float32 ``[rows, in]`` and ``[out, in]``: oneDNN's kernel where
    PyTorch has it (2-3x faster than MKL's at a few rows on the AMD CPUs measured), else PyTorch's own."""
    if _has_onednn():
        return torch.ops.mkldnn._linear_pointwise(rows.contiguous(), weight, bias, "none", [], "")
    return F.linear(rows, weight, bias)


@functools.cache
def _has_onednn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@torch.no_grad()
def blockwise_float32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for bf16 ``x`` and ``weight`` on the CPU, computed in float32 a block of
    weights at a time; returns bf16, as :func:`torch.nn.functional.linear` would."""
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).float().contiguous()
    out = torch.empty(rows.size(0), out_features, dtype=torch.float32)
    bias32 = bias.float() if bias is not None else None
    step = max(1, BLOCK_VALUES // in_features)
    buffer = _buffer(min(step, out_features) * in_features)
    for start in range(0, out_features, step):
        end = min(out_features, start + step)
        block = buffer[: (end - start) * in_features].view(end - start, in_features)
        block.copy_(weight[start:end])
        out[:, start:end] = _onednn_float32(rows, block, bias32[start:end] if bias32 is not None else None)
    return out.to(x.dtype).view(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in] -> [..., out]``."""
        return linear(x, self.weight, self.bias)
