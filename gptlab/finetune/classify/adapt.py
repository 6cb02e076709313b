"""ULMFiT-style domain adaptation: train the base model as a language model on the training texts first.

The model learns the words and style of the new domain before it learns the labels (``--lm-epochs``).
This is a loop of its own rather than the pretraining trainer: it trains on whole texts, padded per
batch, in an order drawn from ``random.Random(seed + 1)``, with torch's default AdamW; the trainer
samples, seeds and optimizes differently, so it would change the classification recipe's figures.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from gptlab.finetune.classify.encode import encode_texts, pad_id_for
from gptlab.finetune.classify.fit import make_optimizer
from gptlab.finetune.classify.model import pad_batch
from gptlab.finetune.classify.precision import autocast

__all__ = ["adapt_language_model"]


def adapt_language_model(
    gpt, tokenizer, texts: Sequence[str], epochs: int, lr: float, batch_size: int, max_length: int,
    bf16: bool, seed: int, progress: bool = False,
) -> list[float]:
    """Train ``gpt`` as a language model on ``texts`` (each ended by <|endoftext|> when there is one).

    A constant learning rate ``lr``, no weight decay, gradients clipped to norm 1. Returns the mean loss
    of each epoch.
    """
    seqs = [s for s in encode_texts(tokenizer, texts, max_length, tokenizer.eot_id is not None) if len(s) > 1]
    params = list(gpt.parameters())
    opt = make_optimizer(gpt, lr, weight_decay=0.0)
    rng = random.Random(seed + 1)
    pad = pad_id_for(tokenizer)
    losses = []
    gpt.train()
    bar = tqdm(total=epochs * math.ceil(len(seqs) / batch_size), desc="adapting the LM", unit="step",
               disable=not progress, dynamic_ncols=True)
    for _ in range(epochs):
        order = list(range(len(seqs)))
        rng.shuffle(order)
        total, count = 0.0, 0
        for b in range(0, len(order), batch_size):
            chunk = [seqs[i] for i in order[b : b + batch_size]]
            ids, mask = pad_batch(chunk, pad)
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            with autocast(bf16):
                _, loss = gpt(ids[:, :-1], targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            total += loss.item()
            count += 1
            bar.update(1)
        losses.append(total / max(count, 1))
        bar.set_postfix(lm_loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses
