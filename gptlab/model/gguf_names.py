"""What export and import of GGUF files share: llama.cpp's tensor names, and its RoPE layout for Llama.

llama.cpp names a model's tensors ``token_embd.weight``, ``blk.N.attn_q.weight`` and so on (its
``gguf-py/gguf/constants.py``); gptlab's ``state_dict`` names map onto them one to one, except a fused
``att.qkv`` of a Llama-design model, which llama.cpp stores as three tensors.

Layouts are gptlab's own: ``nn.Linear`` weights ``[out, in]`` are what llama.cpp's converter writes
(it transposes GPT-2's ``Conv1D`` ``[in, out]`` into this), so nothing is transposed. One change:
llama.cpp's ``llama`` architecture rotates neighbouring pairs of a head's values (the RoPE paper's
layout), Hugging Face and gptlab rotate value ``i`` with ``i + D/2``; its converter therefore reorders
the rows of every head of q and k (``LlamaModel.permute``), and :func:`to_pairs` / :func:`from_pairs`
do the same and undo it. Qwen2 and Qwen3 run in the "NEOX" (halves) layout and are stored as they are.
"""

from __future__ import annotations

import re

import torch

# The architectures gptlab writes and reads (general.architecture).
ARCHS = ("gpt2", "llama", "qwen2", "qwen3")

_TOP = {"tok_emb": "token_embd", "pos_emb": "position_embd", "final_norm": "output_norm", "out_head": "output"}
_BLOCK = {
    "norm1": "attn_norm",
    "att.qkv": "attn_qkv",
    "att.q_proj": "attn_q",
    "att.k_proj": "attn_k",
    "att.v_proj": "attn_v",
    "att.q_norm": "attn_q_norm",
    "att.k_norm": "attn_k_norm",
    "att.out_proj": "attn_output",
    "norm2": "ffn_norm",
    # GPT-2's MLP (fc widens, proj narrows) and the gated one; a model has one or the other.
    "ff.fc": "ffn_up",
    "ff.proj": "ffn_down",
    "ff.gate": "ffn_gate",
    "ff.up": "ffn_up",
    "ff.down": "ffn_down",
}
ROPE_FREQS = "rope_freqs.weight"  # Llama 3's per-frequency divisors (llama.cpp's form of rope_scaling)


def gguf_name(name: str) -> str:
    """llama.cpp's name for gptlab parameter ``name`` (``blocks.3.att.q_proj.weight`` -> ``blk.3.attn_q.weight``).

    Raises ``KeyError`` for a name with no GGUF counterpart.
    """
    module, _, kind = name.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{kind}"
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if not match or match.group(2) not in _BLOCK:
        raise KeyError(name)
    return f"blk.{match.group(1)}.{_BLOCK[match.group(2)]}.{kind}"


def to_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head reordered from halves (``i``, ``i + D/2``) to neighbours (``2i``, ``2i + 1``).

    ``w`` is a q or k projection weight ``[n_heads * D, in]`` or bias ``[n_heads * D]``; this is
    llama.cpp's ``LlamaModel.permute``.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def from_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`to_pairs`: a llama.cpp ``llama`` q/k tensor back in Hugging Face's layout."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
