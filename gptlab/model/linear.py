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
converts a block of weights (4 MB as float32, within the L3 cache) to float32 once and multiplies
all the rows by it with oneDNN's float32 kernel, then the next block. The weights are still read from
memory in bf16, half the bytes of float32, and each is converted once per call instead of once per
row.

**A few rows, transposed.** Given a plain (not pre-packed) weight, oneDNN repacks the whole weight on
every call. From 4 to 47 rows both paths compute ``(weight @ rows.T).T`` instead: the weight is then
oneDNN's input, read as it lies, and only the few rows are repacked. GPT-2 124M at batch 8: float32
decodes about 1.3x faster this way, bf16 (with both changes) about 1.3x.

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
# Weights converted at a time: 2**20 float32 values, 4 MB, within the L3 cache. All 49 of GPT-2's
# products at 8 rows, with the weights streamed from memory, per block size: 2**18 values 83 ms,
# 2**19 57, 2**20 43, 2**21 46, 2**22 49 (of which converting: 27, 20, 16, 17, 20 ms).
BLOCK_VALUES = 1 << 20
# Row counts for which oneDNN is faster given the weight as its *input* and the rows as its "weight"
# (out.T = weight @ rows.T): its kernel then repacks only the few rows, not the whole matrix, which it
# does on every call for a plain (not pre-packed) weight. Measured at 8 rows: GPT-2's 768 x 3072 layer
# 0.61 vs 0.82 ms, its output head 10.2 vs 16.1 ms. The same at 1 row (0.18 ms) and at 64; slower at 256.
SWAP_ROWS = range(4, 48)

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
    if not _has_onednn():
        return F.linear(rows, weight, bias)
    if rows.size(0) in SWAP_ROWS:
        return _contiguous_rows(_onednn_transposed(rows, weight).T, bias, rows.dtype)
    return torch.ops.mkldnn._linear_pointwise(rows.contiguous(), weight, bias, "none", [], "")


def _onednn_transposed(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight @ rows.T``, ``[out, rows]``: the weight as oneDNN's input and the rows as its weight
    (see :data:`SWAP_ROWS`)."""
    return torch.ops.mkldnn._linear_pointwise(weight, rows.contiguous(), None, "none", [], "")


def _contiguous_rows(out: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``out + bias`` as a contiguous ``dtype`` tensor, in one pass over ``out`` (which may be a
    transposed view): added in float32, rounded once."""
    result = torch.empty(out.shape, dtype=dtype)
    if bias is None:
        return result.copy_(out)
    return torch.add(out, bias, out=result)


@functools.cache
def _has_onednn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@torch.no_grad()
def blockwise_float32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for bf16 ``x`` and ``weight`` on the CPU, computed in float32 a block of
    weights at a time; returns bf16, as :func:`torch.nn.functional.linear` would."""
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).float().contiguous()
    # With few rows, each block's product is computed transposed (SWAP_ROWS) into an [out, rows] result.
    transposed = _has_onednn() and rows.size(0) in SWAP_ROWS
    out = torch.empty((out_features, rows.size(0)) if transposed else (rows.size(0), out_features))
    # Blocks of equal size: a short last block (86 of 768 x 3072's rows) costs nearly a full one.
    blocks = max(1, -(-out_features * in_features // BLOCK_VALUES))
    step = -(-out_features // blocks)
    buffer = _buffer(step * in_features)
    for start in range(0, out_features, step):
        end = min(out_features, start + step)
        block = buffer[: (end - start) * in_features].view(end - start, in_features)
        block.copy_(weight[start:end])
        if transposed:
            out[start:end] = _onednn_transposed(rows, block)
        else:
            out[:, start:end] = _onednn_float32(rows, block, None)
    out = _contiguous_rows(out.T if transposed else out, bias.float() if bias is not None else None, x.dtype)
    return out.view(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in] -> [..., out]``."""
        return linear(x, self.weight, self.bias)
