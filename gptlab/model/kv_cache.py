"""A key/value cache: each layer's keys and values for the positions already processed.

Without a cache, generating token n re-runs the model over all n previous tokens. With it, the
prompt is processed once (prefill) and every later step feeds only the newest token, whose query
attends to the stored keys and values. The buffers are allocated once for the whole window, and
each step writes into them in place, so a step allocates nothing that grows with the sequence.
"""

from __future__ import annotations

import torch


def cache_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a cache for ``model`` stores keys and values in (attention over them runs in it too).

    The model's own dtype, except bf16 on a CPU without bf16 instructions (no AVX512-BF16, no AMX):
    there bf16 matrix products take a slow path (3-4x fp32's time for the small products of a decode
    step), while the linear layers, which only stream their weights, still gain from bf16. So such a
    model keeps its cache in float32, at twice the cache memory.
    """
    from gptlab.model.device import fast_bf16

    weight = model.tok_emb.weight
    if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and not fast_bf16(weight.device):
        return torch.float32
    return weight.dtype


class LayerCache:
    """One layer's view of a cache: its key and value buffers and where this forward pass writes.

    The attention layer sees only this, never the whole cache or its own index, so every block runs
    the same code on different tensors (what lets one compiled block serve all of them, see
    :mod:`gptlab.model.compiled`).
    """

    __slots__ = ("keys", "values", "start", "max_len")

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, start: int, max_len: int) -> None:
        self.keys, self.values = keys, values  # [B, kv_heads, >= start + T, D]
        self.start = start  # positions already cached: the new keys/values go here
        self.max_len = max_len

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values ``[B, H, T, D]`` after the cached ones; return all of them."""
        start, end = self.start, self.start + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.keys[:, :, start:end].copy_(k)
        self.values[:, :, start:end].copy_(v)
        return self.keys[:, :, :end], self.values[:, :, :end]


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
        spare: int = 0,
    ) -> None:
        # `spare` positions past max_len are never used: a compiled step's view (see step_view) then
        # never covers a whole buffer, whose strides would differ from every other step's.
        shape = (batch_size, n_heads, max_len + spare, head_dim)
        # Uninitialised on purpose: attention only ever reads positions < length, all written first.
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0  # positions filled so far (the same for every layer once a forward pass ends)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int | None = None, spare: int = 0) -> KVCache:
        """A cache shaped for ``model`` (a :class:`gptlab.model.GPT`), in its dtype and device (``spare``: see __init__)."""
        cfg = model.cfg
        weight = model.tok_emb.weight
        return cls(
            cfg.n_layers,
            batch_size,
            cfg.kv_heads,
            cfg.head_dim,
            min(max_len or cfg.context_length, cfg.context_length),
            dtype=cache_dtype(model),
            device=weight.device,
            spare=spare,
        )

    @classmethod
    def over(cls, keys: list[torch.Tensor], values: list[torch.Tensor], length: int) -> KVCache:
        """A cache over existing per-layer buffers (views are fine) with ``length`` positions filled; allocates nothing."""
        cache = cls.__new__(cls)
        cache.keys, cache.values = list(keys), list(values)
        cache.max_len = keys[0].size(2) if keys else 0
        cache.length = length
        return cache

    def step_view(self, n_new: int = 1) -> KVCache:
        """A cache over these buffers cut to exactly ``length + n_new`` positions, for a compiled step.

        Writing through it fills these buffers; only the view advances (the caller then calls
        :meth:`advance`). Its buffers always end where the step's keys end, so a compiled graph never
        meets the one step where the cache is exactly full as a new shape relation to compile for.
        """
        end = self.length + n_new
        return KVCache.over([k[:, :, :end] for k in self.keys], [v[:, :, :end] for v in self.values], self.length)

    def step_buffers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every layer's whole key and value buffers (contiguous), for a decode step compiled ahead of time."""
        return self.keys, self.values

    def layer(self, i: int) -> LayerCache:
        """Layer ``i``'s part of the cache, writing after the ``length`` positions already filled."""
        return LayerCache(self.keys[i], self.values[i], self.length, self.max_len)

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (called once per forward pass, after the last layer)."""
        self.length += n

    def reset(self) -> None:
        """Forget every position (the buffers are reused, not freed)."""
        self.length = 0
