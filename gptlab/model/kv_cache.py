"""A key/value cache: each layer's keys and values for the positions already processed.

Without a cache, generating token n re-runs the model over all n previous tokens. With it, the
prompt is processed once (prefill) and every later step feeds only the newest token, whose query
attends to the stored keys and values. The buffers are allocated once for the whole window, and
each step writes into them in place, so a step allocates nothing that grows with the sequence.
"""

from __future__ import annotations

import torch


class KVCache:
    """Pre-allocated ``[batch, kv_heads, max_len, head_dim]`` key and value buffers for every layer.

    With grouped-query attention only the key/value heads are stored (Llama 3.2 1B: 8, not 32).
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, n_heads, max_len, head_dim)
        # Uninitialised on purpose: attention only ever reads positions < length, all written first.
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0  # positions filled so far (the same for every layer once a forward pass ends)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache shaped for ``model`` (a :class:`gptlab.model.GPT`), in its dtype and device."""
        cfg = model.cfg
        weight = model.tok_emb.weight
        return cls(
            cfg.n_layers,
            batch_size,
            cfg.kv_heads,
            cfg.head_dim,
            min(max_len or cfg.context_length, cfg.context_length),
            dtype=weight.dtype,
            device=weight.device,
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``layer``'s new keys/values ``[B, H, T, D]`` after the cached ones; return all of them."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.keys[layer][:, :, start:end].copy_(k)
        self.values[layer][:, :, start:end].copy_(v)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (called once per forward pass, after the last layer)."""
        self.length += n

    def reset(self) -> None:
        """Forget every position (the buffers are reused, not freed)."""
        self.length = 0
