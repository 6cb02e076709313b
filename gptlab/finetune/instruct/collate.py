"""From instruction examples to training batches: encoding, the book's collate function, a resumable sampler.

An example becomes ``prompt_ids + answer_ids`` (the prompt is encoded on its own, so the boundary
between prompt and answer is exact). A batch is padded to its longest example plus one end-of-text
token: inputs drop the last position, targets are the inputs shifted by one; every padding target
but the first end-of-text becomes -100 (the model learns to stop), and with ``mask_prompt`` so do the
targets that predict prompt tokens. Finally both are cut to ``max_length`` columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gptlab.data.prompts import PromptStyle
from gptlab.errors import GptlabError

IGNORE_INDEX = -100


def encode_example(tokenizer, style: PromptStyle, entry: dict[str, Any]) -> tuple[list[int], int]:
    """``(ids, prompt_length)`` for one entry: the formatted prompt's ids followed by the answer's.

    Special-token text in the data is encoded as ordinary text, so data cannot inject an end-of-text.
    """
    prompt = tokenizer.encode_ordinary(style.format(entry["instruction"], entry.get("input") or ""))
    answer = tokenizer.encode_ordinary(entry.get("output") or "")
    return prompt + answer, len(prompt)


def collate(
    batch: Sequence[Sequence[int] | tuple[Sequence[int], int]],
    pad_id: int,
    mask_prompt: bool = False,
    max_length: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``[B, T]`` for a batch of token lists (or ``(ids, prompt_length)`` pairs).

    ``T`` is the longest example's length (the book's ``batch_max_length - 1``), capped at
    ``max_length``. Padding is ``pad_id`` (the end-of-text id): the first one after an example is a
    real target, the rest are ``ignore_index``; ``mask_prompt`` also ignores the targets of the
    first ``prompt_length - 1`` positions (those that predict prompt tokens, not the answer).
    """
    if not batch:
        raise GptlabError("collate: empty batch")
    items: list[tuple[list[int], int]] = []
    for item in batch:
        if isinstance(item, tuple):
            ids, prompt_len = list(item[0]), int(item[1])
        else:
            ids, prompt_len = list(item), 0
        items.append((ids, prompt_len))
    width = max(len(ids) for ids, _ in items)  # = (longest + 1 end-of-text) - 1 after the shift
    inputs = torch.full((len(items), width), pad_id, dtype=torch.long)
    targets = torch.full((len(items), width), ignore_index, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(items):
        n = len(ids)
        if n == 0:
            raise GptlabError(f"collate: example {row} has no tokens")
        inputs[row, :n] = torch.tensor(ids, dtype=torch.long)
        # targets[j] = token j + 1 of ids + [end-of-text]; positions past that stay ignored.
        if n > 1:
            targets[row, : n - 1] = torch.tensor(ids[1:], dtype=torch.long)
        targets[row, n - 1] = pad_id  # the first end-of-text: the model learns to stop
        if mask_prompt and prompt_len > 1:
            targets[row, : min(prompt_len - 1, width)] = ignore_index
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return inputs, targets


class InstructBatches:
    """Shuffled batches of encoded examples, epoch after epoch, with a position a checkpoint can save.

    Like the book's ``DataLoader(shuffle=True, drop_last=True)``: each epoch is a seeded permutation
    (a pure function of ``seed`` and the epoch number), split into global batches of
    ``batch_size * world_size`` examples of which this rank takes its own ``batch_size``.
    """

    def __init__(
        self,
        encoded: Sequence[tuple[list[int], int]],
        batch_size: int,
        seed: int,
        pad_id: int,
        mask_prompt: bool = False,
        max_length: int | None = None,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.encoded = list(encoded)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.pad_id, self.mask_prompt, self.max_length = pad_id, mask_prompt, max_length
        self.rank, self.world_size = rank, world_size
        global_batch = batch_size * world_size
        self.batches_per_epoch = len(self.encoded) // global_batch
        if self.batches_per_epoch < 1:
            raise GptlabError(
                f"{len(self.encoded)} training examples are fewer than one batch of {global_batch}; "
                "use more data or a smaller --batch-size"
            )
        self.epoch_index, self.batch_index = 0, 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.encoded)))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.encoded), generator=g).tolist()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch; a new shuffled epoch starts after the last full batch."""
        if self.batch_index >= self.batches_per_epoch:
            self.epoch_index += 1
            self.batch_index = 0
            self._order = self._order_for(self.epoch_index)
        first = self.batch_index * self.batch_size * self.world_size + self.rank * self.batch_size
        picked = [self.encoded[i] for i in self._order[first : first + self.batch_size]]
        self.batch_index += 1
        return collate(picked, self.pad_id, self.mask_prompt, self.max_length)

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional."""
        return self.epoch_index + self.batch_index / self.batches_per_epoch

    def state_dict(self) -> dict:
        """The position: epoch and batch within it (the order itself is recomputed from the seed)."""
        return {"kind": "instruct", "epoch": self.epoch_index, "batch": self.batch_index}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.epoch_index, self.batch_index = int(state["epoch"]), int(state["batch"])
        self._order = self._order_for(self.epoch_index)


def fixed_batches(
    encoded: Sequence[tuple[list[int], int]],
    batch_size: int,
    pad_id: int,
    mask_prompt: bool = False,
    max_length: int | None = None,
    max_batches: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches in file order (the last may be smaller); at most ``max_batches`` (0 = all)."""
    out = []
    for start in range(0, len(encoded), batch_size):
        if max_batches and len(out) >= max_batches:
            break
        out.append(collate(encoded[start : start + batch_size], pad_id, mask_prompt, max_length))
    return out
