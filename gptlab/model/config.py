"""The shape of a model: :class:`GPTConfig` and the named presets.

One config describes both designs gptlab builds. GPT-2 (2019): learned absolute positions, LayerNorm,
a GELU feed-forward block, every head with its own keys and values. The Llama/Qwen family (2023 on):
rotary position embeddings (RoPE), RMSNorm, a gated SiLU feed-forward block (SwiGLU), grouped-query
attention (several query heads share one key/value head), no biases (except Qwen2's on q/k/v) and, in
Qwen3, an RMSNorm on each head's queries and keys. Each choice is one field, so the model code is one
class (as in litgpt), and the presets name the combinations that real models use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gptlab.errors import GptlabError

ATTN_IMPLS = ("sdpa", "explicit")
ACTIVATIONS = ("gelu_tanh", "gelu", "silu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("standard", "gated")
# Frequency-scaling schemes of RoPE gptlab implements (Hugging Face's rope_type names).
ROPE_SCALINGS = ("llama3", "linear")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


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

    # ---- the choices that tell the Llama/Qwen design from GPT-2's (the defaults are GPT-2's)
    # "layernorm" (GPT-2, with a bias) or "rmsnorm" (no bias, computed in float32); eps is layer_norm_eps.
    norm: str = "layernorm"
    # "learned": an absolute position embedding table; "rope": rotary embeddings applied to q and k.
    positions: str = "learned"
    rope_theta: float = 10000.0
    # None, or Hugging Face's rope_scaling dict: {"rope_type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"} or {"rope_type": "linear", "factor"}.
    rope_scaling: dict[str, Any] | None = None
    # "standard": proj(act(fc(x))); "gated": down(act(gate(x)) * up(x)), SwiGLU with activation "silu".
    mlp: str = "standard"
    # Key/value heads; None means n_heads (multi-head). Fewer is grouped-query attention, 1 multi-query.
    n_kv_heads: int | None = None
    # Size of one head; None means emb_dim // n_heads. Qwen3-0.6B has 16 heads of 128 on a 1,024 width.
    head_size: int | None = None
    # Qwen3: RMSNorm over each head's queries and keys, before RoPE.
    qk_norm: bool = False
    # Biases on the attention output projection and on the feed-forward layers (GPT-2 has both).
    proj_bias: bool = True
    mlp_bias: bool = True
    # One [q; k; v] projection (GPT-2's c_attn: one matmul) or three (q_proj, k_proj, v_proj, as
    # Hugging Face's Llama and Qwen have them, which LoRA can then target one by one).
    fused_qkv: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise GptlabError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.head_size is None and self.emb_dim % self.n_heads:
            raise GptlabError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads}), "
                "or head_size must be set"
            )
        for name in ("n_kv_heads", "head_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise GptlabError(f"GPTConfig.{name} must be a positive integer or None, got {value!r}")
        if self.n_heads % self.kv_heads:
            raise GptlabError(
                f"GPTConfig.n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})"
            )
        for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise GptlabError(f"GPTConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.positions == "rope":
            if self.head_dim % 2:
                raise GptlabError(f"GPTConfig: rotary embeddings need an even head size, got {self.head_dim}")
            if not self.rope_theta > 0:
                raise GptlabError(f"GPTConfig.rope_theta must be positive, got {self.rope_theta!r}")
            _check_rope_scaling(self.rope_scaling)
        elif self.rope_scaling is not None:
            raise GptlabError("GPTConfig.rope_scaling needs positions='rope'")
        if self.qk_norm and self.positions != "rope":
            raise GptlabError("GPTConfig.qk_norm needs positions='rope' (it is Qwen3's, applied before RoPE)")
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
        """Size of one attention head: ``head_size``, by default ``emb_dim // n_heads``."""
        return self.head_size or self.emb_dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads: ``n_kv_heads``, by default ``n_heads``."""
        return self.n_kv_heads or self.n_heads

    @property
    def q_dim(self) -> int:
        """Width of all query heads together (``emb_dim`` unless ``head_size`` says otherwise)."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together."""
        return self.kv_heads * self.head_dim

    @property
    def hidden_dim(self) -> int:
        """Size of the feed-forward block's hidden layer."""
        return self.ff_dim or 4 * self.emb_dim

    @property
    def family(self) -> str:
        """``"gpt2"`` for GPT-2's design, ``"llama"`` for the modern one (RoPE), for messages and exports."""
        return "gpt2" if self.positions == "learned" else "llama"

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
    # Small models for CPU work; the vocabulary stays GPT-2's so they use its tokenizer unchanged. They
    # train for minutes, not epochs: no dropout (nothing to overfit yet) and the exact GELU, ~2x cheaper
    # than the tanh form on CPUs. gpt-micro's 128-token window is the main job's: over its 3 minutes on a
    # 2-core CPU, more optimizer steps count for more than a longer context (with TrainConfig's lr 3e-3
    # and no dropout: val 4.91 and 5.07 in two runs, against 5.73 with the 256 window, dropout 0.1, lr 1e-3).
    "gpt-mini": GPTConfig(context_length=512, emb_dim=384, n_heads=6, n_layers=6, tie_weights=True,
                          drop_rate=0.0, activation="gelu"),
    "gpt-micro": GPTConfig(context_length=128, emb_dim=256, n_heads=4, n_layers=4, tie_weights=True,
                           drop_rate=0.0, activation="gelu"),
    "gpt-nano": GPTConfig(context_length=128, emb_dim=128, n_heads=4, n_layers=2, tie_weights=True,
                          drop_rate=0.0, activation="gelu"),
}


def _check_rope_scaling(scaling: dict[str, Any] | None) -> None:
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise GptlabError(f"GPTConfig.rope_scaling must be a dict or None, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALINGS:
        raise GptlabError(
            f"rope_scaling type {kind!r} is not supported; gptlab implements {', '.join(ROPE_SCALINGS)} (or none)"
        )
    needed = _LLAMA3_KEYS if kind == "llama3" else ("factor",)
    for key in needed:
        value = scaling.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise GptlabError(f"rope_scaling[{key!r}] must be a positive number for rope_type {kind!r}, got {value!r}")
    if kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise GptlabError("rope_scaling: high_freq_factor must be larger than low_freq_factor")


def modern(**fields: Any) -> GPTConfig:
    """A config of the Llama/Qwen design: RoPE, RMSNorm, SwiGLU, separate q/k/v, no biases, nothing dropped."""
    base: dict[str, Any] = dict(
        norm="rmsnorm", positions="rope", mlp="gated", activation="silu", fused_qkv=False,
        qkv_bias=False, proj_bias=False, mlp_bias=False, drop_rate=0.0,
    )
    base.update(fields)
    return GPTConfig(**base)


_LLAMA32_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
_LLAMA31_ROPE = {**_LLAMA32_ROPE, "factor": 8.0}
_QWEN3 = dict(vocab_size=151936, context_length=40960, head_size=128, n_kv_heads=8, qk_norm=True,
              rope_theta=1_000_000.0, layer_norm_eps=1e-6, tie_weights=True)
_QWEN25 = dict(vocab_size=151936, context_length=32768, qkv_bias=True, rope_theta=1_000_000.0,
               layer_norm_eps=1e-6, tie_weights=True)
_SMOLLM2 = dict(vocab_size=49152, context_length=8192, rope_theta=100_000.0, tie_weights=True)

# Small models of the modern design for training from scratch, sized like the gpt-* presets (GPT-2's
# vocabulary, so GPT-2's tokenizer). A SwiGLU block has three matrices where GELU's has two, so its
# hidden size is about 8/3 of the width instead of 4x (the same weights), rounded to a multiple of 32.
PRESETS.update({
    "llama-mini": modern(context_length=512, emb_dim=384, n_heads=6, n_kv_heads=2, n_layers=6,
                         ff_dim=1088, tie_weights=True),
    "llama-micro": modern(context_length=256, emb_dim=256, n_heads=4, n_kv_heads=2, n_layers=4,
                          ff_dim=736, tie_weights=True),
    "llama-nano": modern(context_length=128, emb_dim=128, n_heads=4, n_kv_heads=2, n_layers=2,
                         ff_dim=384, tie_weights=True),
})

# Published configs by name (the config.json of each model on the Hugging Face hub). Their weights load
# with --model DIR (or the hub name when online); as presets they are random-weight models of that shape.
PRESETS.update({
    "llama-3.2-1b": modern(vocab_size=128256, context_length=131072, emb_dim=2048, n_heads=32, n_kv_heads=8,
                           n_layers=16, ff_dim=8192, rope_theta=500_000.0, rope_scaling=_LLAMA32_ROPE,
                           tie_weights=True),
    "llama-3.2-3b": modern(vocab_size=128256, context_length=131072, emb_dim=3072, n_heads=24, n_kv_heads=8,
                           n_layers=28, ff_dim=8192, rope_theta=500_000.0, rope_scaling=_LLAMA32_ROPE,
                           tie_weights=True),
    "llama-3.1-8b": modern(vocab_size=128256, context_length=131072, emb_dim=4096, n_heads=32, n_kv_heads=8,
                           n_layers=32, ff_dim=14336, rope_theta=500_000.0, rope_scaling=_LLAMA31_ROPE),
    "qwen3-0.6b": modern(emb_dim=1024, n_heads=16, n_layers=28, ff_dim=3072, **_QWEN3),
    "qwen3-1.7b": modern(emb_dim=2048, n_heads=16, n_layers=28, ff_dim=6144, **_QWEN3),
    "qwen3-4b": modern(emb_dim=2560, n_heads=32, n_layers=36, ff_dim=9728, **_QWEN3),
    "qwen3-8b": modern(emb_dim=4096, n_heads=32, n_layers=36, ff_dim=12288, **{**_QWEN3, "tie_weights": False}),
    "qwen2.5-0.5b": modern(emb_dim=896, n_heads=14, n_kv_heads=2, n_layers=24, ff_dim=4864, **_QWEN25),
    # The base 1.5B model's config.json says 131,072 positions (the 0.5B's, and the instruct models', 32,768).
    "qwen2.5-1.5b": modern(emb_dim=1536, n_heads=12, n_kv_heads=2, n_layers=28, ff_dim=8960,
                           **{**_QWEN25, "context_length": 131072}),
    "smollm2-135m": modern(emb_dim=576, n_heads=9, n_kv_heads=3, n_layers=30, ff_dim=1536, **_SMOLLM2),
    "smollm2-360m": modern(emb_dim=960, n_heads=15, n_kv_heads=5, n_layers=32, ff_dim=2560, **_SMOLLM2),
    "smollm2-1.7b": modern(emb_dim=2048, n_heads=32, n_kv_heads=32, n_layers=24, ff_dim=8192,
                           **{**_SMOLLM2, "rope_theta": 130_000.0}),
})
