"""Model FLOPs per token and the hardware peak, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch

from gptlab.model.config import GPTConfig

# Dense bf16 / fp32(TF32 off) peaks in FLOP/s for common GPUs, by a substring of the device name.
_GPU_PEAKS = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L40": (181e12, 90e12),
    "A10": (125e12, 31e12),
    "4090": (165e12, 82e12),
    "3090": (71e12, 35e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}


def matmul_params(cfg: GPTConfig) -> int:
    """Weights that take part in a matrix product per token: every linear layer's weight, head included.

    Counted from the config's own widths rather than ``emb_dim`` alone, so that grouped-query attention
    (k and v narrower than q), a ``head_size`` that makes q wider than the residual stream, and the
    gated MLP's third matrix are all right. Embedding lookups (tokens, GPT-2's positions) cost nothing
    and are left out; the output head is a real product whether it is tied or not. Biases and norm
    gains are elementwise and negligible next to the matrices.
    """
    attention = cfg.emb_dim * cfg.q_dim + 2 * cfg.emb_dim * cfg.kv_dim + cfg.q_dim * cfg.emb_dim  # q, k, v, out
    mlp = (3 if cfg.mlp == "gated" else 2) * cfg.emb_dim * cfg.hidden_dim  # (gate,) up/fc, down/proj
    return cfg.vocab_size * cfg.emb_dim + cfg.n_layers * (attention + mlp)


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention's 12 * L * q_dim * T.

    The PaLM paper's accounting (appendix B), used by nanoGPT as well. The attention term is the scores
    (q.k) and the weighted sum of the values: each query head does both over ``T`` positions whatever
    the number of key/value heads, so it scales with the query width ``q_dim`` (``emb_dim`` in GPT-2).
    """
    return 6 * matmul_params(cfg) + 12 * cfg.n_layers * cfg.q_dim * seq_len


_MEASURED: dict[tuple[str, bool], float] = {}


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    """Peak dense matmul FLOP/s: a table for known GPUs; on CPU, measured once with a large matmul."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (p_bf16, p_fp32) in _GPU_PEAKS.items():
            if key in name:
                return p_bf16 if bf16 else p_fp32
        return None
    if device.type != "cpu":
        return None
    key = (device.type, bf16)
    if key not in _MEASURED:
        _MEASURED[key] = _measure_cpu_peak(torch.bfloat16 if bf16 else torch.float32)
    return _MEASURED[key]


def _measure_cpu_peak(dtype: torch.dtype, seconds: float = 0.3) -> float:
    """FLOP/s of square matmuls in ``dtype``, the size doubled from 256 until one product takes ~0.1 s.

    A fixed 2048 x 2048 product would do, except on CPUs without native bf16 (no AVX512-BF16 or AMX):
    there one such bf16 product took 107 s on the 2-core test host, so a bf16 run spent minutes here.
    Stopping too small underestimates the peak: on the same host a 1024 x 1024 fp32 product ran at
    ~90 GFLOP/s and 2048 x 2048 at ~140, and MFU read 100% against the smaller one.
    """
    size = 256
    while True:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        if size == 256:
            a @ b  # the first product of a process also starts its thread pool: not a measure
        start = time.perf_counter()
        a @ b
        if time.perf_counter() - start > 0.1 or size >= 2048:
            break
        size *= 2
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start)
