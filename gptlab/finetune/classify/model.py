"""A GPT with its language-model head replaced by a classification head (the book's chapter 6).

The prediction reads the output at the last real token of each sequence: under causal attention it is
the only position that has seen the whole text. Batches are right-padded; because a real token never
attends to anything to its right, padding cannot change a real token's output, and the classifier cuts
the batch down to its longest real sequence before running the model, so the same text gets the very
same logits whatever it was padded to.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gptlab.errors import GptlabError
from gptlab.model.gpt import GPT

TRAINABLE_SCOPES = ("head", "last", "all", "lora")


class GPTClassifier(nn.Module):
    """``gpt`` (whose ``out_head`` now has ``n_classes`` outputs) plus last-real-token pooling."""

    def __init__(self, gpt: GPT, n_classes: int, seed: int | None = None) -> None:
        super().__init__()
        if n_classes < 2:
            raise GptlabError(f"a classifier needs at least two classes, got {n_classes}")
        self.gpt = gpt
        self.n_classes = n_classes
        if seed is not None:
            torch.manual_seed(seed)
        w = gpt.tok_emb.weight
        # A fresh head, untied from the embedding; nn.Linear's own initialisation, as the book does.
        gpt.out_head = nn.Linear(gpt.cfg.emb_dim, n_classes, device=w.device, dtype=w.dtype)

    @property
    def cfg(self):
        """The underlying GPT's config."""
        return self.gpt.cfg

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, n_classes]`` for token ids ``idx`` ``[B, T]``.

        ``attention_mask`` (``[B, T]``, 1 = real token) marks padding; right padding is the fast path
        (the batch is cut to its longest text and runs with plain causal attention). Left or mixed
        padding is passed on to the model as a mask.
        """
        B, T = idx.shape
        if attention_mask is None:
            last = torch.full((B,), T - 1, dtype=torch.long, device=idx.device)
            logits = self.gpt(idx)
        else:
            mask = attention_mask.to(torch.bool)
            lengths = mask.sum(dim=1)
            if bool((lengths == 0).any()):
                raise GptlabError("a sequence in the batch has no real token (empty text)")
            positions = torch.arange(T, device=idx.device)
            right_padded = bool((mask == (positions[None, :] < lengths[:, None])).all())
            if right_padded:
                longest = int(lengths.max())
                last = lengths - 1
                logits = self.gpt(idx[:, :longest])
            else:
                # The last real token is the right-most 1 of each row.
                last = torch.where(mask, positions[None, :], -1).max(dim=1).values
                logits = self.gpt(idx, attention_mask=attention_mask)
        return logits[torch.arange(B, device=idx.device), last]



class EnsembleClassifier(nn.Module):
    """Classifiers of the same classes whose predicted probabilities are averaged.

    Fine-tuning runs that differ only in their seed (head initialisation, batch order) disagree on the
    hard examples; averaging their probabilities cancels much of that noise. ``forward`` returns the log
    of the averaged probabilities, so softmax, argmax and cross-entropy treat it like one model's logits.
    """

    def __init__(self, members: list[GPTClassifier]) -> None:
        super().__init__()
        if not members:
            raise GptlabError("an ensemble needs at least one classifier")
        if len({m.n_classes for m in members}) != 1:
            raise GptlabError("the classifiers of an ensemble must predict the same classes")
        self.members = nn.ModuleList(members)
        self.n_classes = members[0].n_classes

    @property
    def cfg(self):
        """The first member's GPT config (all members share the base architecture)."""
        return self.members[0].cfg

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log(mean_k softmax(logits_k))`` ``[B, n_classes]`` in float32."""
        logp = torch.stack([m(idx, attention_mask).float().log_softmax(-1) for m in self.members])
        # log of a mean of probabilities, computed without leaving log space (no underflow to -inf).
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


def set_trainable(model: GPTClassifier, scope: str = "last", last_blocks: int = 1) -> int:
    """Freeze the model except ``scope``; returns the number of trainable parameters.

    * ``head``: the classification head only;
    * ``last``: the head, the last ``last_blocks`` transformer blocks and the final norm (the book);
    * ``all``: every parameter.

    (``lora`` is set up by :func:`gptlab.finetune.lora.apply_lora` instead.)
    """
    gpt = model.gpt
    if scope not in ("head", "last", "all"):
        raise GptlabError(f"--trainable {scope!r}: expected head, last, all or lora")
    n_layers = len(gpt.blocks)
    if scope == "last" and not 1 <= last_blocks <= n_layers:
        raise GptlabError(f"--last-blocks {last_blocks}: the model has {n_layers} blocks (expected 1..{n_layers})")
    for p in model.parameters():
        p.requires_grad_(scope == "all")
    if scope != "all":
        for p in gpt.out_head.parameters():
            p.requires_grad_(True)
    if scope == "last":
        for block in gpt.blocks[n_layers - last_blocks :]:
            for p in block.parameters():
                p.requires_grad_(True)
        for p in gpt.final_norm.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def pad_batch(
    sequences: list[list[int]], pad_id: int, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to ``length`` (default: the longest); returns ``(ids, attention_mask)``."""
    if not sequences:
        raise GptlabError("empty batch")
    longest = max(len(s) for s in sequences)
    length = longest if length is None else length
    if longest > length:
        raise GptlabError(f"a sequence of {longest} tokens does not fit the padded length {length}")
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        if not s:
            raise GptlabError("cannot classify an empty text (it has no tokens)")
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
