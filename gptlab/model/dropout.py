"""One dropout setting for a whole model.

A GPT drops out in two kinds of places: its ``nn.Dropout`` layers (after the embeddings and on each
residual branch) and inside attention, where the probability is a plain number handed to
``scaled_dot_product_attention`` (``CausalSelfAttention.dropout_p``), not a module. Changing the
dropout of a loaded model has to reach both, and the config too, so that what is saved and reported
says what was trained.
"""

from __future__ import annotations

from torch import nn

from gptlab.errors import GptlabError
from gptlab.model.attention import CausalSelfAttention
from gptlab.model.gpt import GPT


def set_dropout(model: nn.Module, p: float) -> None:
    """Use dropout probability ``p`` everywhere in ``model`` (a GPT, or a module holding one).

    Sets the ``p`` of every ``nn.Dropout``, every attention layer's ``dropout_p``, and the
    ``drop_rate`` of every GPT's config. LoRA adapters' dropout is an ``nn.Dropout`` too but a setting
    of its own: call this before adding adapters.
    """
    if not 0.0 <= p < 1.0:
        raise GptlabError(f"dropout must be at least 0 and below 1, got {p}")
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, CausalSelfAttention):
            m.dropout_p = p
        elif isinstance(m, GPT):
            m.cfg = m.cfg.replace(drop_rate=p)
