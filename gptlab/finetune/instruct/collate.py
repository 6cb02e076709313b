"""From instruction examples to training batches: encoding, the book's collate function, a resumable sampler.

An example becomes ``prompt_ids + answer_ids`` (the prompt is encoded on its own, so the boundary
between prompt and answer is exact). A batch is padded to its longest example plus one end-of-text
token: inputs drop the last position, targets are the inputs shifted by one; every padding target
but the first end-of-text becomes -100 (the model learns to stop), and with ``mask_prompt`` so do the
targets that predict prompt tokens. Finally both are cut to ``max_length`` columns.

Chat entries (``{"messages": [...]}``) become ``(ids, mask)`` instead
(:func:`encode_chat_example`): the conversation rendered with the model's chat template, and a
per-token flag that is True on the assistant turns' tokens. Their targets are ``ignore_index``
everywhere except where the next token is an assistant token: the model learns to write the
assistant's answers and end-of-turn markers, never the user's or system's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gptlab.data.prompts import PromptStyle
from gptlab.errors import GptlabError

IGNORE_INDEX = -100

# The named special tokens a chat template may refer to, as transformers passes them.
CHAT_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def encode_example(tokenizer, style: PromptStyle, entry: dict[str, Any]) -> tuple[list[int], int]:
    """``(ids, prompt_length)`` for one entry: the formatted prompt's ids followed by the answer's.

    Special-token text in the data is encoded as ordinary text, so data cannot inject an end-of-text.
    """
    prompt = tokenizer.encode_ordinary(style.format(entry["instruction"], entry.get("input") or ""))
    answer = tokenizer.encode_ordinary(entry.get("output") or "")
    return prompt + answer, len(prompt)


def chat_special_tokens(tokenizer) -> dict[str, str | None]:
    """The named special tokens of ``tokenizer`` (``bos_token``, ``eos_token``, ...) for a chat template."""
    return {name: getattr(tokenizer, name, None) for name in CHAT_SPECIAL_TOKENS}


def encode_chat_example(
    tokenizer,
    template: str,
    entry: dict[str, Any],
    special_tokens: dict[str, str | None] | None = None,
    *,
    name: str = "chat template",
    **template_kwargs: Any,
) -> tuple[list[int], list[bool]]:
    """``(ids, mask)`` for a chat entry: the conversation rendered with ``template``, and True on assistant tokens.

    The text is :func:`gptlab.tokenizer.chat_template.assistant_spans`'s rendering (as transformers'
    ``apply_chat_template`` renders it, without a generation prompt); the mask is True exactly on
    the tokens of the assistant spans (each assistant's content plus the end-of-turn text after it,
    see there). ``special_tokens`` defaults to the tokenizer's own (:func:`chat_special_tokens`);
    ``template_kwargs`` become template variables (e.g. ``enable_thinking=False``).

    The text is encoded piece by piece, the pieces outside and inside spans separately, and the ids
    concatenated, so every token lies wholly inside or outside an assistant span. transformers'
    ``return_assistant_tokens_mask`` instead encodes the whole text once and marks every token that
    overlaps a span: the same ids and mask only where a span boundary is also a token boundary (as
    at special tokens such as ``<|eot_id|>``). We choose exact boundaries, so a token never mixes a
    prompt's text with an answer's. Special-token text is encoded as special tokens
    (``allowed_special="all"``), as transformers does, so the template's markers get their ids; the
    same then holds for marker text inside the data itself.
    """
    from gptlab.tokenizer.chat_template import assistant_spans

    if special_tokens is None:
        special_tokens = chat_special_tokens(tokenizer)
    text, spans = assistant_spans(template, entry["messages"], special_tokens=special_tokens, name=name,
                                  **template_kwargs)
    # A marker the template writes (e.g. Llama's <|begin_of_text|>) that this tokenizer only knows as
    # plain text would silently become several ordinary tokens: a model that never saw its real id.
    unknown = [t for t in dict.fromkeys(v for v in special_tokens.values() if v)
               if t in text and t not in tokenizer.special_tokens]
    if unknown:
        raise GptlabError(f"{name}: the template writes {unknown[0]!r}, which is not a special token of the "
                          f"tokenizer {getattr(tokenizer, 'name', '')!r}")
    ids: list[int] = []
    mask: list[bool] = []
    pos = 0
    for start, end in [*spans, (len(text), len(text))]:
        for piece, is_assistant in ((text[pos:start], False), (text[start:end], True)):
            if piece:
                piece_ids = tokenizer.encode(piece, allowed_special="all")
                ids.extend(piece_ids)
                mask.extend([is_assistant] * len(piece_ids))
        pos = end
    return ids, mask


def collate(
    batch: Sequence[Sequence[int] | tuple[Sequence[int], int] | tuple[Sequence[int], Sequence[bool]]],
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

    An item may also be ``(ids, mask)`` with one bool per token (:func:`encode_chat_example`): then
    target ``j`` is ``ids[j + 1]`` where ``mask[j + 1]`` is True and ``ignore_index`` everywhere else,
    padding included, whatever ``mask_prompt`` says (the chat template writes its own end-of-turn
    marker inside the mask, so no end-of-text is appended as a target).
    """
    if not batch:
        raise GptlabError("collate: empty batch")
    items: list[tuple[list[int], int, list[bool] | None]] = []
    for row, item in enumerate(batch):
        token_mask: list[bool] | None = None
        if isinstance(item, tuple) and not isinstance(item[1], int):
            ids, prompt_len, token_mask = list(item[0]), 0, [bool(m) for m in item[1]]
            if len(token_mask) != len(ids):
                raise GptlabError(f"collate: example {row} has {len(ids)} tokens but a mask of {len(token_mask)}")
        elif isinstance(item, tuple):
            ids, prompt_len = list(item[0]), int(item[1])
        else:
            ids, prompt_len = list(item), 0
        items.append((ids, prompt_len, token_mask))
    width = max(len(ids) for ids, _, _ in items)  # = (longest + 1 end-of-text) - 1 after the shift
    inputs = torch.full((len(items), width), pad_id, dtype=torch.long)
    targets = torch.full((len(items), width), ignore_index, dtype=torch.long)
    for row, (ids, prompt_len, token_mask) in enumerate(items):
        n = len(ids)
        if n == 0:
            raise GptlabError(f"collate: example {row} has no tokens")
        inputs[row, :n] = torch.tensor(ids, dtype=torch.long)
        if token_mask is not None:
            # targets[j] predicts ids[j + 1]: kept only when that token is an assistant token.
            keep = torch.tensor(token_mask[1:], dtype=torch.bool)
            shifted = torch.tensor(ids[1:], dtype=torch.long)
            targets[row, : n - 1] = torch.where(keep, shifted, torch.full_like(shifted, ignore_index))
            continue
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
        encoded: Sequence[tuple[list[int], int] | tuple[list[int], list[bool]]],
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
    encoded: Sequence[tuple[list[int], int] | tuple[list[int], list[bool]]],
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
