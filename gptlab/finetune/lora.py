"""LoRA: low-rank adapters on a model's linear layers (the book's appendix E).

A wrapped layer computes ``W x + b + (alpha / r) * B A dropout(x)`` with the base ``W`` and ``b`` frozen;
``A`` (``r x in``) starts Kaiming-uniform and ``B`` (``out x r``) at zero, so a freshly wrapped model
computes exactly what the base model does.

gptlab's attention has one fused ``qkv`` layer where the book has ``W_query``, ``W_key`` and ``W_value``.
A single adapter on the fused matrix would share one ``A`` between the three; the book (and peft on
separate q/k/v matrices) gives each its own, so a fused layer carries ``splits = 3`` independent
``(A, B)`` pairs, one per output third. That is also what makes the book's count come out: every linear
layer of the 124M two-class classifier at r = 16 leaves 2,666,528 trainable parameters.

The Llama/Qwen layout (``fused_qkv=False``) has the three projections apart (``att.q_proj``, ``att.k_proj``,
``att.v_proj``) and a gated feed-forward block (``ff.gate``, ``ff.up``, ``ff.down``); each of those is an
ordinary one-adapter layer. The aliases (``attn``, ``qkv``, ``ff``, ``all``) name the layers of both layouts,
so one ``--lora-targets`` value means the same thing on GPT-2 and on Llama; ``q``, ``k``, ``v``, ``o``,
``gate``, ``up`` and ``down`` name single projections of the modern layout (peft's usual choice is ``q,v``).

The wrapped layer keeps the base ``weight`` and ``bias`` under their own names (``blocks.0.att.qkv.weight``),
so base checkpoints load into a LoRA model unchanged, and adds ``lora_A`` / ``lora_B`` beside them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.errors import GptlabError
from gptlab.model.linear import linear

# The layers of each layout by role. GPT-2's: one fused qkv, a two-matrix MLP (fc, proj). The
# Llama/Qwen layout: separate q/k/v projections and a gated MLP (gate, up, down). out_proj is shared.
_QKV = ("blocks.*.att.qkv", "blocks.*.att.q_proj", "blocks.*.att.k_proj", "blocks.*.att.v_proj")
_ATTN = (*_QKV, "blocks.*.att.out_proj")
_FF = ("blocks.*.ff.fc", "blocks.*.ff.proj", "blocks.*.ff.gate", "blocks.*.ff.up", "blocks.*.ff.down")

# Every linear layer of a GPT, either layout: the book's choice for classification (appendix E). As
# apply_lora's targets, say "all": given as a list, each of these patterns must match on its own.
DEFAULT_TARGETS: tuple[str, ...] = (*_ATTN, *_FF, "out_head")

# Short names accepted in ``targets`` (and on the command line). An alias may name layers that only one
# layout has; it is enough that some of its patterns match (see apply_lora).
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "all": DEFAULT_TARGETS,
    "attn": _ATTN,
    "qkv": _QKV,
    "ff": _FF,
    "head": ("out_head",),
    "q": ("blocks.*.att.q_proj",),
    "k": ("blocks.*.att.k_proj",),
    "v": ("blocks.*.att.v_proj",),
    "o": ("blocks.*.att.out_proj",),
    "gate": ("blocks.*.ff.gate",),
    "up": ("blocks.*.ff.up",),
    "down": ("blocks.*.ff.down",),
}

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRALinear(nn.Module):
    """A linear layer with frozen base weights plus ``splits`` low-rank updates, one per output slice.

    ``splits`` > 1 is for fused projections (``qkv``: 3): output slice ``i`` gets its own ``A_i``
    (``r x in``) and ``B_i`` (``out/splits x r``). Parameters: ``lora_A`` ``[splits, r, in]`` and
    ``lora_B`` ``[splits, out/splits, r]``.
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, splits: int = 1
    ) -> None:
        super().__init__()
        if not isinstance(rank, int) or rank <= 0:
            raise GptlabError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise GptlabError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        if base.out_features % splits:
            raise GptlabError(f"LoRA splits={splits} does not divide out_features={base.out_features}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.splits = splits
        # The base layer's own Parameter objects: a tie (out_head <-> tok_emb) survives the wrap.
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(splits, rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(splits, self.out_features // splits, rank, **kw))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """``A`` Kaiming-uniform (as ``nn.Linear`` initialises its weight), ``B`` zero."""
        for i in range(self.splits):
            nn.init.kaiming_uniform_(self.lora_A[i], a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B A`` as an ``[out, in]`` matrix (slices stacked along the output)."""
        return (self.lora_B @ self.lora_A).reshape(self.out_features, self.in_features) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in] -> [..., out]``."""
        y = linear(x, self.weight, self.bias)  # the model's own product (its fast bf16 path included)
        if self.merged:
            return y
        # x A^T for every slice at once: one matmul to [..., splits * r]; then each slice's B.
        h = F.linear(self.lora_dropout(x), self.lora_A.reshape(self.splits * self.rank, self.in_features))
        h = h.unflatten(-1, (self.splits, self.rank))
        upd = torch.einsum("...sr,sor->...so", h, self.lora_B.to(h.dtype)).flatten(-2)
        return y + upd * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (inference without the extra matmuls)."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (restores it up to rounding)."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, splits={self.splits}, merged={self.merged}"
        )


def _target_items(targets: Sequence[str] | str) -> list[tuple[str, tuple[str, ...]]]:
    """Each target as given (comma lists split) with the patterns it stands for (an alias's, or itself)."""
    if isinstance(targets, str):
        targets = [targets]
    items: list[tuple[str, tuple[str, ...]]] = []
    for item in targets:
        for part in str(item).split(","):
            part = part.strip()
            if part:
                items.append((part, TARGET_ALIASES.get(part, (part,))))
    return items


def expand_targets(targets: Sequence[str] | str) -> tuple[str, ...]:
    """Patterns from ``targets``: aliases (see :data:`TARGET_ALIASES`) and comma lists expanded, duplicates dropped."""
    return tuple(dict.fromkeys(pat for _, pats in _target_items(targets) for pat in pats))


def _layer_kinds(names: Sequence[str]) -> str:
    """``blocks.0.att.q_proj, blocks.1.att.q_proj, out_head`` -> ``blocks.*.att.q_proj, out_head``."""
    kinds = dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.*.", n) for n in names)
    return ", ".join(kinds) or "none"


def _splits_for(name: str, module: nn.Linear, parent: nn.Module) -> int:
    """How many independent adapters a layer gets: 3 on a fused q/k/v projection, else 1."""
    if name.rsplit(".", 1)[-1] != "qkv":
        return 1
    q_dim, kv_dim = getattr(parent, "q_dim", None), getattr(parent, "kv_dim", None)
    if q_dim is not None and kv_dim is not None:
        # A fused projection of grouped-query attention has a query part wider than the key and value
        # parts; LoRALinear's slices are equal, so such a layer gets one adapter over the whole output.
        return 3 if q_dim == kv_dim else 1
    return 3 if module.out_features % 3 == 0 else 1


def _fingerprint(model: nn.Module) -> str:
    """A short hash of the base model: its config and a few weights that LoRA never touches.

    Values are rounded to bf16 before hashing so the same weights loaded in fp32 or bf16 match.
    """
    h = hashlib.sha256()
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        # Only the shape-defining fields: dropout or attention kernel do not change the weights.
        shape = {k: v for k, v in cfg.to_dict().items() if k not in ("drop_rate", "attn_impl")}
        h.update(json.dumps(shape, sort_keys=True).encode())
    params = dict(model.named_parameters())
    picked = [n for n in ("tok_emb.weight", "pos_emb.weight") if n in params]
    picked += [n for n in params if n.endswith("norm1.weight")][:2]
    if not picked:  # not a GPT: hash the first few non-LoRA tensors
        picked = [n for n in params if "lora_" not in n][:4]
    for name in picked:
        t = params[name].detach()
        if t.device.type == "meta":
            continue
        h.update(name.encode())
        flat = t.reshape(-1)[:4096].to(torch.bfloat16).to(torch.float32).cpu()
        h.update(flat.numpy().tobytes())
    return h.hexdigest()[:16]


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: Sequence[str] | str = "all",
    dropout: float = 0.0,
) -> int:
    """Wrap the linear layers whose qualified names match ``targets``; freeze every other parameter.

    ``targets`` are fnmatch patterns over names like ``blocks.3.att.qkv``, ``blocks.3.att.q_proj`` or
    ``out_head`` (or the aliases of :data:`TARGET_ALIASES`), as a list or comma-separated. Each target
    must match at least one layer (an alias: any of its patterns), else :class:`GptlabError` names it
    and the model's layers. Returns the number of trainable parameters left.
    """
    items = _target_items(targets)
    if not items:
        raise GptlabError("--lora-targets: no layer pattern given")
    patterns = expand_targets(targets)
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    matches = {pat: [n for n, _ in linear if fnmatch.fnmatchcase(n, pat)] for pat in patterns}
    # Every target must find a layer: a name of the other layout (q on GPT-2's fused qkv, fc on Llama)
    # or a typo would otherwise train less than asked without a word. Checked before anything changes.
    unmatched = [item if pats == (item,) else f"{item} ({', '.join(pats)})"
                 for item, pats in items if not any(matches[p] for p in pats)]
    if unmatched:
        raise GptlabError(
            f"--lora-targets: {'; '.join(unmatched)} match no linear layer of this model "
            f"(its linear layers: {_layer_kinds([n for n, _ in linear])})"
        )
    fingerprint = _fingerprint(model)
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = {n for names in matches.values() for n in names}
    for name, module in linear:
        if name in chosen:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, LoRALinear(module, rank, alpha, dropout, _splits_for(name, module, parent)))
    # Remembered so an adapter saved later names the base it was trained on, even after a merge.
    model._lora_config = {
        "rank": rank,
        "alpha": float(alpha),
        "dropout": float(dropout),
        # Only the patterns that matched: an alias's patterns of the other layout would name nothing
        # when the adapter is loaded again (where each pattern must match).
        "targets": [pat for pat in patterns if matches[pat]],
        "base_fingerprint": fingerprint,
    }
    return count_trainable(model)


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (each shared tensor counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """The model's LoRA layers with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def tied_lora_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer, other)`` for each LoRA layer whose base weight is also the parameter ``other``.

    A tied output head (GPT-2, the llama-* presets, Qwen3-0.6B) shares its matrix with ``tok_emb``.
    """
    params = list(model.named_parameters(remove_duplicate=False))
    tied = []
    for name, layer in lora_layers(model):
        others = [n for n, p in params if p is layer.weight and not n.startswith(name + ".")]
        if others:
            tied.append((name, others[0]))
    return tied


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (see :meth:`LoRALinear.merge`).

    Refuses (GptlabError) a model with an adapter on a tied weight: folding the head's update into
    the matrix it shares with the token embedding would change the embedding too.
    """
    tied = tied_lora_layers(model)
    if tied:
        layer, other = tied[0]
        raise GptlabError(
            f"--lora-targets: cannot merge the adapter of {layer}, its weight is tied to {other} "
            "(merging would change both); leave it out of the targets (e.g. attn,ff)"
        )
    for _, m in lora_layers(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for _, m in lora_layers(model):
        m.unmerge()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (``...lora_A`` / ``...lora_B``), detached on the CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".lora_" in k or k.startswith("lora_")}


def _trained_extras(model: nn.Module) -> dict[str, torch.Tensor]:
    # Non-LoRA parameters left trainable on purpose (a new classification head, say): they are part of
    # what fine-tuning produced, so the adapter must carry them too.
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: p.detach().cpu().contiguous()
        for p in model.parameters()
        if p.requires_grad and "lora_" not in names[id(p)]
    }


def save_adapter(model: nn.Module, directory: str | os.PathLike, base: dict[str, Any] | None = None) -> Path:
    """Write ``adapter.safetensors`` + ``adapter_config.json`` into ``directory`` (atomically, each file).

    The weights are the LoRA matrices plus any other parameter left trainable (e.g. a new head). The
    config holds rank, alpha, targets, dropout, the base model's fingerprint, and ``base`` (free-form
    information about the base, e.g. ``{"model": "runs/sotu-..."}``).
    """
    from safetensors.torch import save

    from gptlab.io import atomic_write_bytes, atomic_write_text

    cfg = getattr(model, "_lora_config", None)
    if cfg is None:
        raise GptlabError("save_adapter: the model has no LoRA layers (call apply_lora first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lora = lora_state_dict(model)
    extras = _trained_extras(model)
    atomic_write_bytes(directory / ADAPTER_WEIGHTS, save({**lora, **extras}))
    meta = {
        "format": "gptlab-lora",
        **cfg,
        "extra_parameters": sorted(extras),
        "trainable_parameters": sum(t.numel() for t in {**lora, **extras}.values()),
        "base": base or {},
    }
    atomic_write_text(directory / ADAPTER_CONFIG, json.dumps(meta, indent=2) + "\n")
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` (checked to be one)."""
    path = Path(directory) / ADAPTER_CONFIG
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptlabError(f"{path}: no LoRA adapter here (missing {ADAPTER_CONFIG})") from None
    except (ValueError, OSError) as exc:
        raise GptlabError(f"{path}: not a readable adapter config ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "gptlab-lora":
        raise GptlabError(f"{path}: not a gptlab LoRA adapter config (format should be gptlab-lora)")
    return meta


def load_adapter(model: nn.Module, directory: str | os.PathLike, check_base: bool = True) -> dict[str, Any]:
    """Apply LoRA to ``model`` as the adapter in ``directory`` was configured and load its weights.

    Refuses (GptlabError) an adapter trained on a different base model (config or weights differ).
    Returns the adapter config.
    """
    from safetensors.torch import load_file

    meta = read_adapter_config(directory)
    if check_base and meta.get("base_fingerprint") != _fingerprint(model):
        raise GptlabError(
            f"{Path(directory) / ADAPTER_CONFIG}: adapter was trained on a different base model "
            f"(fingerprint {meta.get('base_fingerprint')}, this model's is {_fingerprint(model)})"
        )
    try:
        tensors = load_file(str(Path(directory) / ADAPTER_WEIGHTS))
    except (OSError, RuntimeError, ValueError) as exc:
        raise GptlabError(f"{Path(directory) / ADAPTER_WEIGHTS}: cannot read adapter weights ({exc})") from None
    apply_lora(model, int(meta["rank"]), float(meta["alpha"]), meta["targets"], float(meta.get("dropout", 0.0)))
    model._lora_config["base_fingerprint"] = meta.get("base_fingerprint")
    own = model.state_dict()
    for name, t in tensors.items():
        if name not in own:
            raise GptlabError(f"{directory}: adapter tensor {name} has no place in this model")
        if own[name].shape != t.shape:
            raise GptlabError(
                f"{directory}: adapter tensor {name} has shape {tuple(t.shape)}, the model expects {tuple(own[name].shape)}"
            )
    missing = [k for k in own if ".lora_" in k and k not in tensors]
    if missing:
        raise GptlabError(f"{directory}: adapter lacks {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict(tensors, strict=False)
    for name, p in model.named_parameters():
        if name in meta.get("extra_parameters", []):
            p.requires_grad_(True)
    return meta
