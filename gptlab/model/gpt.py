"""The GPT model (the book's chapter 4 ``GPTModel``), in GPT-2's design or the Llama/Qwen one.

token ids -> token embedding (+ absolute position embedding, GPT-2) -> dropout -> n_layers x Block
-> final norm -> linear head -> logits over the vocabulary. Rotary models (Llama, Qwen) have no
position table: each block rotates its queries and keys by angles computed here once per forward.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from gptlab.errors import GptlabError
from gptlab.model.attention import build_attention_mask, positions_from_mask
from gptlab.model.config import GPTConfig
from gptlab.model.generate import Prompt, generate, stream_generate
from gptlab.model.hf import load_weights, read_config, resolve_model_dir, save_pretrained
from gptlab.model.kv_cache import KVCache
from gptlab.model.layers import Block
from gptlab.model.linear import Linear
from gptlab.model.norm import make_norm
from gptlab.model.rope import inverse_frequencies, rope_cos_sin


class BlockInputs(NamedTuple):
    """What every block of one forward pass receives besides the previous block's output."""

    x: torch.Tensor  # [B, T, emb_dim]: the embedded tokens, the first block's input
    mask: torch.Tensor | None  # from build_attention_mask
    is_causal: bool
    rope: tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin) for rotary models


class _SkipInit(TorchFunctionMode):
    """Skip ``torch.nn.init`` while building a model whose every tensor is about to be read from a file.

    On the meta device the init functions would change nothing, yet their first use loads torch's Python
    reference kernels (and sympy with them): seconds and ~80 MB for values that are never kept.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else (kwargs or {})["tensor"]  # init functions return their tensor
        return func(*args, **(kwargs or {}))


class GPT(nn.Module):
    """A decoder-only transformer, GPT-2's or Llama/Qwen's design; see :class:`GPTConfig`."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        # Rotary models keep their frequencies as a plain float32 tensor, not a buffer: .to(bfloat16)
        # must not round them (see _apply), and a checkpoint need not carry what the config defines.
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim) if cfg.positions == "learned" else None
        self.rope_inv_freq = inverse_frequencies(cfg) if cfg.positions == "rope" else None
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = make_norm(cfg)
        self.out_head = Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            # One matrix both embeds tokens and scores them (GPT-2 does this; saves vocab x emb_dim weights).
            self.out_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith(("att.out_proj.weight", "ff.proj.weight", "ff.down.weight")):
                # Each block adds two branches to the residual stream; GPT-2 scales their output
                # projections by 1/sqrt(2 n_layers) so the stream's variance does not grow with depth.
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2's initialisation: weights N(0, 0.02), zero biases (LayerNorms keep 1 and 0)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _apply(self, fn: Any, recurse: bool = True) -> GPT:
        """Follow the model to its device (``.to``, ``.cuda``), keeping the RoPE frequencies in float32."""
        super()._apply(fn, recurse)
        if self.rope_inv_freq is not None and self.tok_emb.weight.device.type != "meta":
            self.rope_inv_freq = self.rope_inv_freq.to(self.tok_emb.weight.device)
        return self

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, T, vocab]`` for token ids ``idx`` ``[B, T]``; with ``targets``, ``(logits, loss)``.

        * ``targets``: ``[B, T]`` next-token ids; positions set to -100 are ignored in the loss.
        * ``attention_mask``: ``[B, past + T]``, 1 for real tokens and 0 for left padding (``past`` is
          the number of positions already in ``kv_cache``, 0 without one).
        * ``kv_cache``: keys/values of earlier positions; this call appends ``T`` more.
        * ``position_ids``: ``[B, T]`` positions; by default counted from the mask or the cache.
        * ``last_only``: compute logits for the last position only (all generation needs).
        """
        inputs = self.embed(idx, attention_mask, kv_cache, position_ids)
        x = inputs.x
        for i, block in enumerate(self.blocks):
            x = block(x, inputs.mask, inputs.is_causal, kv_cache.layer(i) if kv_cache is not None else None, inputs.rope)
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        logits = self.head(x, last_only)
        if targets is None:
            return logits
        # Cross-entropy in float32 even when the model runs in bf16: the log-sum-exp over 50k logits needs it.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def embed(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> BlockInputs:
        """Everything before the first block: token (and position) embeddings, the mask, rotary angles.

        Arguments as in :meth:`forward`, which is ``embed``, the blocks, then :meth:`head`; a compiled
        decode step (:mod:`gptlab.model.compiled`) runs the same three parts with compiled blocks.
        """
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.cfg.context_length:
            raise GptlabError(
                f"sequence of {past + T} tokens exceeds the model's context_length {self.cfg.context_length}"
            )
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise GptlabError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)} (cached + new tokens)"
            )
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=idx.device)
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        else:
            rope = rope_cos_sin(self.rope_inv_freq, position_ids, x.dtype)
        x = self.drop_emb(x)
        mask, is_causal = build_attention_mask(T, past, attention_mask, idx.device)
        return BlockInputs(x, mask, is_causal, rope)

    def head(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Everything after the last block: the final norm and the output head (at the last position only if asked)."""
        x = self.final_norm(x)
        if last_only:
            x = x[:, -1:, :]
        return self.out_head(x)

    # ------------------------------------------------------------------ sizes

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters (a tied output head is counted once, as the book does).

        ``exclude_embeddings`` leaves out the token and position embedding tables (and so a tied head).
        """
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.tok_emb.weight), None)
            if self.pos_emb is not None:
                params.pop(id(self.pos_emb.weight), None)
        return sum(p.numel() for p in params.values())

    # ------------------------------------------------------------------ generation

    def generate(self, idx: Prompt, max_new_tokens: int, **options: Any) -> torch.Tensor | list[int] | list[list[int]]:
        """Continue ``idx``; see :func:`gptlab.model.generate.generate` (and ``stream_generate``) for the options."""
        return generate(self, idx, max_new_tokens, **options)

    def stream_generate(self, idx: Prompt, max_new_tokens: int, **options: Any) -> Iterator[torch.Tensor]:
        """Yield a ``[B]`` tensor of new ids per step; see :func:`gptlab.model.generate.stream_generate`."""
        return stream_generate(self, idx, max_new_tokens, **options)

    # ------------------------------------------------------------------ Hugging Face format

    # The format itself (config translation, tensor names and layouts, the files) is gptlab.model.hf's,
    # which does not know this class: these two only build the model and hand it over.

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str | os.PathLike, dtype: torch.dtype | None = None, download: bool = True
    ) -> GPT:
        """A model from a Hugging Face folder (GPT-2, Llama, Mistral, Qwen2, Qwen3) or a hub name, in eval mode.

        ``dtype`` converts the weights as they are read (e.g. ``torch.bfloat16`` for fast CPU inference);
        by default they keep the file's dtype. A hub name is downloaded into the cache once, unless
        ``download`` is False. Peak memory is the model plus one tensor.
        """
        directory = resolve_model_dir(name_or_dir, download=download)
        cfg = read_config(directory)
        with torch.device("meta"), _SkipInit():
            model = cls(cfg)  # no memory and no random init: every tensor comes from the file
        load_weights(model, directory, dtype=dtype)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` that ``transformers`` loads as GPT2LMHeadModel."""
        save_pretrained(self, directory)
