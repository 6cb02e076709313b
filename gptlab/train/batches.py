"""Where training batches come from, with a position that a checkpoint can save and restore exactly.

Two samplers over one 1-D array of token ids (a tensor, or a numpy memmap of a prepared corpus):

* :class:`RandomWindows` – each batch is ``batch_size`` windows at random offsets (nanoGPT style); its
  position is the state of its own ``torch.Generator``.
* :class:`EpochWindows` – the book's chapter 5 loader: windows at a fixed stride, shuffled each epoch,
  ``drop_last``; its position is (epoch, batch index), and the order of epoch ``e`` is a pure function
  of (seed, e), so nothing else needs saving.

With data parallelism, each rank takes its own share of every global batch (``rank``/``world_size``),
so the ranks together see exactly the batches one process would.
"""

from __future__ import annotations

import numpy as np
import torch

from gptlab.errors import GptlabError


def _as_index_array(tokens) -> np.ndarray | torch.Tensor:
    if isinstance(tokens, (list, tuple)):
        return torch.tensor(tokens, dtype=torch.long)
    return tokens


def _gather(tokens, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Rows ``tokens[s : s + length]`` for each start, as an int64 tensor ``[len(starts), length]``."""
    if isinstance(tokens, torch.Tensor):
        idx = starts[:, None] + torch.arange(length)
        return tokens[idx].long()
    rows = [np.asarray(tokens[s : s + length], dtype=np.int64) for s in starts.tolist()]
    return torch.from_numpy(np.stack(rows))


class RandomWindows:
    """Random windows of ``block_size + 1`` tokens; ``next()`` gives ``(x, y)`` with y = x shifted by one."""

    def __init__(self, tokens, block_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.tokens = _as_index_array(tokens)
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.n_starts = len(self.tokens) - block_size
        if self.n_starts < 1:
            raise GptlabError(
                f"the training data has {len(self.tokens)} tokens, fewer than one window of "
                f"{block_size + 1} (block size + 1); use more data or a smaller --block-size"
            )
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens_per_epoch = len(self.tokens)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch."""
        starts = torch.randint(self.n_starts, (self.batch_size * self.world_size,), generator=self.generator)
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        rows = _gather(self.tokens, starts, self.block_size + 1)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {"kind": "random", "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @property
    def epoch(self) -> float:
        """Epochs' worth of tokens drawn so far is tracked by the trainer; random sampling has no epochs."""
        return 0.0


class EpochWindows:
    """Windows at ``stride``, shuffled per epoch (seeded), in batches; incomplete last batch dropped."""

    def __init__(
        self,
        tokens,
        block_size: int,
        batch_size: int,
        seed: int,
        stride: int | None = None,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.tokens = _as_index_array(tokens)
        self.block_size, self.batch_size = block_size, batch_size
        self.stride = stride or block_size
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        # The book's loop: for i in range(0, len(ids) - max_length, stride).
        self.starts = torch.arange(0, len(self.tokens) - block_size, self.stride)
        global_batch = batch_size * world_size
        self.batches_per_epoch = len(self.starts) // global_batch
        if self.batches_per_epoch < 1:
            raise GptlabError(
                f"the training data has {len(self.tokens)} tokens: {len(self.starts)} windows of {block_size + 1} "
                f"at stride {self.stride}, fewer than one batch of {global_batch}; use more data or a smaller batch"
            )
        self.epoch_index, self.batch_index = 0, 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return self.starts
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return self.starts[torch.randperm(len(self.starts), generator=g)]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch; rolls over to a new shuffled epoch at the end."""
        if self.batch_index >= self.batches_per_epoch:
            self.epoch_index += 1
            self.batch_index = 0
            self._order = self._order_for(self.epoch_index)
        global_batch = self.batch_size * self.world_size
        first = self.batch_index * global_batch + self.rank * self.batch_size
        starts = self._order[first : first + self.batch_size]
        self.batch_index += 1
        rows = _gather(self.tokens, starts, self.block_size + 1)
        return rows[:, :-1], rows[:, 1:]

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional."""
        return self.epoch_index + self.batch_index / self.batches_per_epoch

    def state_dict(self) -> dict:
        return {"kind": "epoch", "epoch": self.epoch_index, "batch": self.batch_index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_index, self.batch_index = int(state["epoch"]), int(state["batch"])
        self._order = self._order_for(self.epoch_index)


def eval_windows(tokens, block_size: int, max_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of validation batches: non-overlapping windows from the start, at most ``max_batches``.

    Fixed, so validation losses at different steps (and across resumes) are comparable.
    """
    tokens = _as_index_array(tokens)
    starts = torch.arange(0, max(0, len(tokens) - block_size), block_size)
    if len(starts) == 0:
        raise GptlabError(
            f"the validation data has {len(tokens)} tokens, fewer than one window of {block_size + 1}; "
            f"use a larger validation fraction or a smaller block size"
        )
    if max_batches > 0:
        starts = starts[: max_batches * batch_size]
    out = []
    for i in range(0, len(starts), batch_size):
        rows = _gather(tokens, starts[i : i + batch_size], block_size + 1)
        out.append((rows[:, :-1], rows[:, 1:]))
    return out
