"""Weight-only quantization: int8 and int4 linear layers for fast CPU inference.

Generating one token reads every weight once, so a decode step is bound by how many bytes the
weights take: bf16 is 2 bytes a weight, int8 one, int4 half of one. Quantizing the weights (and only
the weights: activations stay in bf16) cuts the bytes read per token, and with them the time.

* ``int8``: one scale per output channel (row), symmetric: ``w ~ q * scale`` with ``q`` in [-127, 127].
  The row's largest magnitude maps to 127, so no value is clipped.
* ``int4``: one scale and one zero point per group of ``group_size`` consecutive input weights of a
  row (asymmetric, min/max): ``w ~ q * scale + minimum`` with ``q`` in [0, 15]. Sixteen levels are
  too few for a whole row; small groups follow the weights' local range.

The matrix products are PyTorch's own weight-packed CPU kernels (``aten._weight_int8pack_mm`` and
``aten._weight_int4pack_mm_for_cpu``), which read the packed weights and dequantize on the fly. The
embedding table stays in bf16 (a lookup reads one row per token, not the whole table); a tied output
head gets its own quantized copy.

A quantized model is saved with :func:`save_quantized` (``gptlab quantize``) as ``config.json`` with a
``quantization_config`` + ``model.safetensors`` with the integer weights, and read back with
:func:`load_quantized` without ever materialising the full-precision weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from gptlab.errors import GptlabError
from gptlab.model.linear import Linear
from gptlab.model.quant_modes import DEFAULT_GROUP_SIZE, INT4_GROUP_SIZES, QUANT_MODES  # noqa: F401 - re-exported

QUANT_METHOD = "gptlab"  # config.json's quantization_config.quant_method for folders written here
FORMAT_VERSION = 1
# The int4 kernel packs rows by 16 (an output head of 50,257 rows is padded to 50,272, then sliced).
_INT4_ROW_MULTIPLE = 16


# ------------------------------------------------------------------------------------ int8


def _copy_bias(linear: nn.Linear, layer: nn.Module) -> None:
    """The float bias of ``linear`` into a quantized ``layer``, in bf16 (the kernels' output dtype)."""
    if linear.bias is not None:
        layer.bias.data = linear.bias.detach().to(torch.bfloat16).clone()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the contiguous bf16 ``[rows, in]`` matrix the packed kernels take."""
    return x.reshape(-1, x.size(-1)).to(torch.bfloat16).contiguous()


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` for a ``[out, in]`` weight: int8 ``q`` and float32 ``scale`` ``[out]``, ``w ~ q * scale``."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + bias`` with int8 weights ``q`` ``[out, in]`` and a float scale per row."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self._scale_bf16: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize ``linear``'s weight; the bias stays in floating point."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        q, scale = quantize_int8(linear.weight)
        layer.weight.copy_(q)
        layer.scale.copy_(scale)
        _copy_bias(linear, layer)
        return layer

    def dequantized(self) -> torch.Tensor:
        """The float32 ``[out, in]`` weight these integers stand for."""
        return self.weight.float() * self.scale[:, None]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        return _keep_float32(self, ("scale",), fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in] -> [..., out]``, computed in bf16 (the kernel's fast path), returned in ``x``'s dtype."""
        if self._scale_bf16 is None or self._scale_bf16.device != self.scale.device:
            # The kernel wants the scale in the activations' dtype; converted once, not every step.
            self._scale_bf16 = self.scale.to(torch.bfloat16)
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(_rows(x), self.weight, self._scale_bf16)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


# ------------------------------------------------------------------------------------ int4


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, scale, minimum)``: ``q`` uint8 ``[out, in]`` in 0..15, ``scale`` and ``minimum`` float32
    ``[out, in / group_size]``, with ``w ~ q * scale + minimum`` group by group."""
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise GptlabError(f"int4: input size {in_features} is not a multiple of the group size {group_size}")
    w = weight.detach().float().reshape(out_features, in_features // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15.0).clamp(min=1e-12)
    q = torch.round((w - low[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    return q.reshape(out_features, in_features), scale, low


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit values a byte (even column in the high nibble): how int4 weights are saved."""
    return (q[:, 0::2] << 4) | q[:, 1::2]


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`."""
    return torch.stack((packed >> 4, packed & 15), dim=-1).reshape(packed.size(0), -1)


class Int4Linear(nn.Module):
    """``y = x @ W.T + bias`` with ``W`` stored as 4-bit groups (a scale and a zero point per group)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        group_size: int = DEFAULT_GROUP_SIZE,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if group_size not in INT4_GROUP_SIZES:
            raise GptlabError(f"int4 group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, got {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        rows = -(-out_features // _INT4_ROW_MULTIPLE) * _INT4_ROW_MULTIPLE
        groups = in_features // group_size
        # What is saved: the 4-bit values two a byte, and each group's scale and minimum.
        self.register_buffer("qweight", torch.empty(rows, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(rows, groups, dtype=torch.float32, device=device))
        self.register_buffer("mins", torch.empty(rows, groups, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = DEFAULT_GROUP_SIZE) -> Int4Linear:
        """Quantize ``linear``'s weight in groups of ``group_size``; the bias stays in floating point."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, linear.weight.device)
        weight = linear.weight.detach()
        pad = layer.qweight.size(0) - weight.size(0)
        if pad:
            weight = torch.cat([weight, weight.new_zeros(pad, weight.size(1))])
        q, scale, low = quantize_int4(weight, group_size)
        layer.qweight.copy_(pack_nibbles(q))
        layer.scales.copy_(scale)
        layer.mins.copy_(low)
        _copy_bias(linear, layer)
        return layer

    def dequantized(self) -> torch.Tensor:
        """The float32 ``[out, in]`` weight these integers stand for."""
        q = unpack_nibbles(self.qweight).float().view(self.qweight.size(0), -1, self.group_size)
        w = q * self.scales[..., None] + self.mins[..., None]
        return w.reshape(self.qweight.size(0), -1)[: self.out_features]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        return _keep_float32(self, ("scales", "mins"), fn, recurse)

    def _kernel_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel's packed layout, built on first use (it depends on the CPU, so it is never saved)."""
        if self._packed is None:
            q = unpack_nibbles(self.qweight).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            # The kernel computes (q - 8) * scale + zero: its zero is our minimum shifted by 8 steps.
            zero = self.mins + 8 * self.scales
            scales_zeros = torch.stack([self.scales, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
            self._packed = (packed, scales_zeros)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in] -> [..., out]``, computed in bf16, returned in ``x``'s dtype."""
        packed, scales_zeros = self._kernel_weights()
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            _rows(x), packed, self.group_size, scales_zeros
        )
        if y.size(-1) != self.out_features:
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self._packed = None  # new integers: repack on the next call
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int4, group_size={self.group_size}")


QuantLinear = Int8Linear | Int4Linear


def _keep_float32(layer: nn.Module, names: tuple[str, ...], fn, recurse: bool) -> nn.Module:  # noqa: ANN001
    """``Module._apply`` that moves ``names`` with the layer but keeps them float32.

    ``model.to(torch.bfloat16)`` converts every floating tensor; a scale rounded to bf16 would
    shift a whole row (or group) of weights by up to 0.4%, for no saving worth having.
    """
    before = {name: getattr(layer, name) for name in names}
    nn.Module._apply(layer, fn, recurse)
    for name, tensor in before.items():
        moved = getattr(layer, name)
        if moved.dtype != torch.float32:
            setattr(layer, name, tensor.to(moved.device))
    # Cached kernel-side copies belong to the old device or dtype.
    layer._scale_bf16 = None
    layer._packed = None
    return layer


# ------------------------------------------------------------------------------------ whole models


def check_mode(mode: str, group_size: int = DEFAULT_GROUP_SIZE, flag: str = "--quantize") -> None:
    """Raise a one-line error for an unknown mode or an unusable int4 group size."""
    if mode not in QUANT_MODES:
        raise GptlabError(f"{flag} must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    if mode == "int4" and group_size not in INT4_GROUP_SIZES:
        raise GptlabError(f"--group-size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, got {group_size}")


def _linears(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, Linear):  # quantized layers and LoRA layers are left alone
                yield parent, name, child


def _fold_adapters(model: nn.Module) -> None:
    """Replace each LoRA layer (anything with ``lora_A``/``lora_B`` and ``delta_weight()``) by a plain
    linear layer holding base + update, so that the update is quantized with the weight it changes.

    The merged weight is a new tensor: a head tied to the embedding keeps the embedding unchanged.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not (hasattr(child, "lora_A") and hasattr(child, "delta_weight")):
                continue
            weight = child.weight.detach()
            if not getattr(child, "merged", False):
                weight = weight + child.delta_weight().to(weight.dtype)
            linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                               device="meta")
            linear.weight = nn.Parameter(weight.clone(), requires_grad=False)
            if child.bias is not None:
                linear.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
            setattr(parent, name, linear)


def _quantizable(linear: nn.Linear, mode: str, group_size: int) -> bool:
    # A classifier's 2-class head or a layer narrower than a group gains nothing and loses accuracy.
    if linear.out_features < _INT4_ROW_MULTIPLE:
        return False
    return mode == "int8" or linear.in_features % group_size == 0


def quantize_model(model: nn.Module, mode: str, group_size: int = DEFAULT_GROUP_SIZE) -> nn.Module:
    """Replace ``model``'s linear layers by int8 or int4 ones, in place; returns the model, in eval mode.

    Everything else (embeddings, norms, biases, layers too small to gain) moves to bf16, the
    kernels' compute dtype. A tied output head gets its own quantized copy of the embedding matrix.
    LoRA adapters are folded into their weights first.
    """
    check_mode(mode, group_size)
    if getattr(model, "quantization", None):
        raise GptlabError(f"the model is already quantized ({model.quantization['mode']})")
    model.eval()
    _fold_adapters(model)
    for parent, name, linear in _linears(model):
        if not _quantizable(linear, mode, group_size):
            continue
        layer = Int8Linear.from_linear(linear) if mode == "int8" else Int4Linear.from_linear(linear, group_size)
        setattr(parent, name, layer)
    # Moving the float remainder to bf16 also unties the head: it is a quantized module now.
    model.to(torch.bfloat16)
    model.quantization = {"mode": mode, "group_size": group_size if mode == "int4" else None}
    return model


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what a decode step reads, give or take the embedding)."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ------------------------------------------------------------------------------------ files


def save_quantized(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write a quantized model as ``config.json`` (with ``quantization_config``) + ``model.safetensors``."""
    from safetensors.torch import save_file

    from gptlab.io import atomic_write_text
    from gptlab.model.hf import config_to_hf

    info = getattr(model, "quantization", None)
    if not info:
        raise GptlabError("save_quantized: the model is not quantized (see quantize_model)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config_to_hf(model.cfg, torch.bfloat16)
    config["quantization_config"] = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, **info}
    # A plain state_dict: one tensor per name (a tied embedding is no longer shared with the head).
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt", "quantization": json.dumps(info)})
    os.replace(tmp, directory / "model.safetensors")
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")


def quantization_of(directory: str | os.PathLike) -> dict | None:
    """The ``quantization_config`` of a folder written by :func:`save_quantized`, else None."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(quant, dict) and quant.get("quant_method") == QUANT_METHOD:
        return quant
    return None


def load_quantized(directory: str | os.PathLike) -> nn.Module:
    """A model saved by :func:`save_quantized`, in eval mode (integer weights read as they are)."""
    from safetensors import safe_open

    from gptlab.model.gpt import GPT, _SkipInit
    from gptlab.model.hf import read_config

    directory = Path(directory)
    quant = quantization_of(directory)
    if quant is None:
        raise GptlabError(f"{directory}/config.json: no gptlab quantization_config")
    if quant.get("format_version") != FORMAT_VERSION:
        raise GptlabError(f"{directory}/config.json: quantization format_version {quant.get('format_version')!r}, "
                          f"this gptlab reads {FORMAT_VERSION}")
    mode, group_size = quant.get("mode"), quant.get("group_size") or DEFAULT_GROUP_SIZE
    check_mode(str(mode), group_size, flag=f"{directory}/config.json quantization_config.mode")
    cfg = read_config(directory)
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        with torch.device("meta"), _SkipInit():
            model = GPT(cfg)
        for parent, name, linear in _linears(model):
            prefix = _module_name(model, parent, name)
            if f"{prefix}.weight" in names and f"{prefix}.scale" in names:
                layer = Int8Linear(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
            elif f"{prefix}.qweight" in names:
                layer = Int4Linear(linear.in_features, linear.out_features, linear.bias is not None, group_size, "meta")
            else:
                continue
            setattr(parent, name, layer)
        expected = model.state_dict()
        missing = sorted(set(expected) - names)
        if missing:
            raise GptlabError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing)")
        state = {}
        for key, meta in expected.items():
            tensor = f.get_tensor(key)
            if tuple(tensor.shape) != tuple(meta.shape):
                raise GptlabError(f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(meta.shape)}")
            state[key] = tensor
    model.load_state_dict(state, assign=True)
    model.quantization = {"mode": mode, "group_size": group_size if mode == "int4" else None}
    return model.eval()


def _module_name(model: nn.Module, parent: nn.Module, child: str) -> str:
    for name, module in model.named_modules():
        if module is parent:
            return f"{name}.{child}" if name else child
    raise KeyError(child)
