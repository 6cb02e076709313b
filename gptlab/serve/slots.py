"""A KV cache whose rows are independent sequences that come and go: the memory of continuous batching.

:class:`gptlab.model.KVCache` holds one batch that starts and ends together. A server instead keeps a
fixed number of *slots*; a request takes a free slot, decodes alongside the others for as long as it
needs, and gives the slot back, while other requests keep going.

Layout: the ``n`` active rows are packed at the front (``0 .. n-1``) so a decode step computes over
exactly the live sequences, never over empty slots. All rows share one width ``W`` and each row's
``lens[r]`` cached positions are *right-aligned*, ending at ``W``; the positions before them are left
padding that the attention mask hides. This is what the model already understands (left-padded
batches), so one ordinary ``model(...)`` call decodes every row at once: the new token of every row is
written at position ``W``, and each row gets its own position id (its own length).

* joining: a prompt prefilled on its own is copied into the next free row, right-aligned at ``W``
  (if it is longer than ``W``, every row is first moved right to make room);
* leaving: the last active row is moved into the freed row, so the active rows stay packed;
* full width: when ``W`` reaches the buffer length, every row moves left by the smallest padding
  (requests are admitted only if prompt + max_tokens fits the context, so that padding is >= 1).

The object implements the three things :meth:`gptlab.model.GPT.forward` uses of a cache
(``length``, ``layer``, ``advance``), for the active rows only.
"""

from __future__ import annotations

import torch

from gptlab.model.kv_cache import KVCache, LayerCache, cache_dtype


class SlotCache:
    """``slots`` rows of keys/values ``[slots, heads, max_len, head_dim]`` per layer, rows packed, right-aligned."""

    def __init__(
        self,
        n_layers: int,
        slots: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        # One position more than max_len, never used: the view a compiled decode step gets (step_view)
        # then never covers a whole buffer, whose strides would differ from every other step's.
        shape = (slots, n_heads, max_len + 1, head_dim)
        # Zeros, not empty: padded positions are multiplied by an attention weight of exactly 0, and
        # 0 * NaN (possible in uninitialised memory) would be NaN.
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.mask = torch.zeros(slots, max_len + 1, dtype=torch.long, device=device)
        self._row_buffers: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self.lens = [0] * slots
        self.slots = slots
        self.max_len = max_len
        self.n = 0  # active rows (packed at 0 .. n-1)
        self.width = 0  # shared width W: every active row's positions end here
        self.shifts = {"right": 0, "left": 0}  # how often rows were moved (for tests and diagnostics)

    @classmethod
    def for_model(cls, model: torch.nn.Module, slots: int, max_len: int | None = None) -> SlotCache:
        """A cache for ``model`` (a :class:`gptlab.model.GPT`) with room for ``max_len`` positions per slot.

        ``max_len`` defaults to the model's whole context and is never more. Every slot's buffer is
        allocated here, up front, so a caller serving a long-context model should pass a cap
        (:class:`gptlab.serve.engine.Engine` does).
        """
        cfg = model.cfg
        weight = model.tok_emb.weight
        length = cfg.context_length if max_len is None else min(max_len, cfg.context_length)
        return cls(cfg.n_layers, slots, cfg.kv_heads, cfg.head_dim, length,
                   dtype=cache_dtype(model), device=weight.device)

    # ------------------------------------------------------------------ the model's cache interface

    @property
    def length(self) -> int:
        """Positions already cached (the shared width); the model calls this ``past``."""
        return self.width

    def layer(self, i: int) -> LayerCache:
        """Layer ``i``'s buffers for the active rows, writing at ``W``."""
        return LayerCache(self.keys[i][: self.n], self.values[i][: self.n], self.width, self.max_len)

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled in every active row."""
        self.mask[: self.n, self.width : self.width + n] = 1
        self.width += n
        for r in range(self.n):
            self.lens[r] += n

    # ------------------------------------------------------------------ decode-step inputs

    def step_view(self) -> KVCache:
        """The active rows as a plain :class:`KVCache` over this cache's buffers, for a compiled decode step.

        The model writes the new keys/values through it (at ``W``, into these buffers) and advances only
        the view; the caller then calls :meth:`advance`. This keeps the per-row bookkeeping (a Python
        loop over the rows) out of the compiled graph, where it would fix the number of rows and so
        compile once per batch size. The view ends at ``W + 1``, so that its length relative to ``W``
        is the same at every step (see :meth:`KVCache.step_view`).
        """
        n, end = self.n, self.width + 1
        return KVCache.over([k[:n, :, :end] for k in self.keys], [v[:n, :, :end] for v in self.values], self.width)

    def step_buffers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The active rows' whole key and value buffers, for a decode step compiled ahead of time.

        Rows are packed at the front, so these are contiguous: such a step's code assumes the strides
        it was compiled for. Made once per row count (a step would otherwise slice every layer again).
        """
        buffers = self._row_buffers.get(self.n)
        if buffers is None:
            buffers = self._row_buffers[self.n] = ([k[: self.n] for k in self.keys], [v[: self.n] for v in self.values])
        return buffers

    def clear(self) -> None:
        """Free every row. The buffers keep their values: only finite ones were ever written (padding
        must never be NaN, see above), and the mask hides them from the rows added later."""
        self.mask.zero_()
        self.lens = [0] * self.slots
        self.n = 0
        self.width = 0

    def step_mask(self) -> torch.Tensor:
        """The ``[n, W + 1]`` attention mask for one decode step (the new position counts as real)."""
        mask = self.mask[: self.n, : self.width + 1]
        mask[:, self.width] = 1
        return mask

    def step_positions(self) -> torch.Tensor:
        """``[n, 1]`` position ids of each row's next token: its own length (padding is not counted)."""
        return torch.tensor(self.lens[: self.n], dtype=torch.long, device=self.mask.device).unsqueeze(1)

    def make_room(self) -> None:
        """Before a decode step: make sure position ``W`` exists, moving rows left when the buffer is full.

        Also compacts early when every row carries a lot of padding, so attention does not keep
        paying for positions no row uses.
        """
        if self.n == 0:
            self.width = 0
            return
        pad = self.width - max(self.lens[: self.n])
        if self.width >= self.max_len or (pad >= 64 and pad * 4 >= self.width):
            if pad <= 0:
                raise ValueError("slot cache full: a row already fills the whole context")
            self._shift(-pad)

    # ------------------------------------------------------------------ rows joining and leaving

    def add(self, prefilled: KVCache) -> int:
        """Copy a batch-1 prefilled cache into the next free row (right-aligned at ``W``); returns the row."""
        if self.n >= self.slots:
            raise ValueError("no free slot")
        p = prefilled.length
        if p > self.max_len:
            raise ValueError(f"prompt of {p} positions > max_len {self.max_len}")
        if p > self.width:
            self._shift(p - self.width)  # every row (and W) moves right to make room on the left
        r = self.n
        start = self.width - p
        for layer in range(len(self.keys)):
            self.keys[layer][r, :, start : self.width].copy_(prefilled.keys[layer][0, :, :p])
            self.values[layer][r, :, start : self.width].copy_(prefilled.values[layer][0, :, :p])
        self.mask[r].zero_()
        self.mask[r, start : self.width] = 1
        self.lens[r] = p
        self.n += 1
        return r

    def remove(self, r: int) -> int | None:
        """Free row ``r``; the last active row moves into it. Returns the row that moved there (or None)."""
        last = self.n - 1
        moved = None
        if r != last:
            w = self.width
            for layer in range(len(self.keys)):
                self.keys[layer][r, :, :w].copy_(self.keys[layer][last, :, :w])
                self.values[layer][r, :, :w].copy_(self.values[layer][last, :, :w])
            self.mask[r].copy_(self.mask[last])
            self.lens[r] = self.lens[last]
            moved = last
        self.lens[last] = 0
        self.n -= 1
        if self.n == 0:
            self.width = 0
        return moved

    def _shift(self, d: int) -> None:
        """Move every active row's positions by ``d`` (right if > 0, left if < 0) and ``W`` with them."""
        n, w = self.n, self.width
        new_w = w + d
        if n:
            self.shifts["right" if d > 0 else "left"] += 1
            lo = max(0, -d)  # source range [lo, w) -> [lo + d, new_w)
            for buf in (*self.keys, *self.values):
                buf[:n, :, lo + d : new_w] = buf[:n, :, lo:w].clone()
            self.mask[:n, lo + d : new_w] = self.mask[:n, lo:w].clone()
            if d > 0:
                self.mask[:n, :d] = 0
            else:
                self.mask[:n, new_w:] = 0
        self.width = new_w
