"""Model FLOPs per token and the hardware peak, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch

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


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight (forward + backward) plus attention's 12 * L * d * T.

    The PaLM paper's accounting (appendix B), used by nanoGPT as well; embeddings' lookups are free,
    but a tied or untied output head is a real matrix product, so all non-position weights count.
    """
    n_params = (
        cfg.vocab_size * cfg.emb_dim  # output head (the token embedding lookup itself costs nothing)
        + cfg.n_layers * (12 * cfg.emb_dim * cfg.emb_dim)  # qkv, out proj, 2 feed-forward matrices
    )
    return 6 * n_params + 12 * cfg.n_layers * cfg.emb_dim * seq_len


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
        dtype = torch.bfloat16 if bf16 else torch.float32
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        a @ b  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.3:
            a @ b
            n += 1
        _MEASURED[key] = 2 * 2048**3 * n / (time.perf_counter() - start)
    return _MEASURED[key]
