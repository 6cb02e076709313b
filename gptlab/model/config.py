"""The shape of a GPT model: :class:`GPTConfig` and the named presets (GPT-2 sizes and small CPU ones)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gptlab.errors import GptlabError

ATTN_IMPLS = ("sdpa", "explicit")
ACTIVATIONS = ("gelu_tanh", "gelu")


@dataclass
class GPTConfig:
    """Hyper-parameters of :class:`gptlab.model.GPT`, named as in the book's ``GPT_CONFIG_124M``.

    The defaults are the book's 124M model: no bias on the query/key/value projections and a separate
    (untied) output head. GPT-2 as OpenAI released it has ``qkv_bias=True`` and ``tie_weights=True``;
    :meth:`GPT.from_pretrained` sets both.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_weights: bool = False
    layer_norm_eps: float = 1e-5
    # Hidden size of the feed-forward block; None means 4 * emb_dim (GPT-2's choice).
    ff_dim: int | None = None
    # "sdpa": torch's fused scaled_dot_product_attention; "explicit": the readable reference
    # (scores, causal mask, softmax, dropout). Both compute the same function.
    attn_impl: str = "sdpa"
    # Feed-forward non-linearity: "gelu_tanh" is GPT-2's tanh approximation (the book's GELU class);
    # "gelu" is the exact erf form (nanoGPT's choice), about 2x cheaper on CPUs, for models trained here.
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise GptlabError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads:
            raise GptlabError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise GptlabError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.ff_dim is not None and self.ff_dim <= 0:
            raise GptlabError(f"GPTConfig.ff_dim must be a positive integer or None, got {self.ff_dim!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise GptlabError(f"GPTConfig.attn_impl must be one of {', '.join(ATTN_IMPLS)}, got {self.attn_impl!r}")
        if self.activation not in ACTIVATIONS:
            raise GptlabError(
                f"GPTConfig.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )

    @property
    def head_dim(self) -> int:
        """Size of one attention head: ``emb_dim // n_heads``."""
        return self.emb_dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """Size of the feed-forward block's hidden layer."""
        return self.ff_dim or 4 * self.emb_dim

    def replace(self, **changes: Any) -> GPTConfig:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise GptlabError(f"unknown GPTConfig field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        """Build from :meth:`to_dict`'s output; unknown keys are an error (a typo should not pass silently)."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise GptlabError(f"unknown GPTConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A preset by name (see :data:`PRESETS`), optionally with some fields changed."""
        if name not in PRESETS:
            raise GptlabError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[name].replace(**overrides)


# GPT-2's four sizes (the book's table in chapter 4 / appendix) and small models that train on a CPU.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(emb_dim=768, n_heads=12, n_layers=12),  # 124M
    "gpt2-medium": GPTConfig(emb_dim=1024, n_heads=16, n_layers=24),  # 355M
    "gpt2-large": GPTConfig(emb_dim=1280, n_heads=20, n_layers=36),  # 774M
    "gpt2-xl": GPTConfig(emb_dim=1600, n_heads=25, n_layers=48),  # 1558M
    # Small models for CPU work; the vocabulary stays GPT-2's so they use its tokenizer unchanged.
    "gpt-mini": GPTConfig(context_length=512, emb_dim=384, n_heads=6, n_layers=6, tie_weights=True),
    "gpt-micro": GPTConfig(context_length=256, emb_dim=256, n_heads=4, n_layers=4, tie_weights=True),
    "gpt-nano": GPTConfig(context_length=128, emb_dim=128, n_heads=4, n_layers=2, tie_weights=True),
}
