"""Read a GGUF model file (llama.cpp's format) into a :class:`~gptlab.model.GPT` and its tokenizer.

Architectures ``gpt2``, ``llama``, ``qwen2`` and ``qwen3``, tensors in F32, F16, BF16, Q8_0 or Q4_0.
Q4_0 matrices of linear layers are kept as 4-bit integers (:class:`~gptlab.model.quantize.Int4Linear`
with groups of 32): a Q4_0 block is a scale ``d`` and 32 values ``q`` in 0..15 standing for
``(q - 8) * d``, which is exactly a group of scale ``d`` and minimum ``-8 d``. So the file's integers
are used as they are, at a quarter of bf16's memory. Other quantized tensors (Q8_0, whose scales per
32 values do not map onto int8 layers' one scale per row; Q4_0 embeddings) are dequantized into the
model's dtype. The metadata and tensor table are
read by :func:`gptlab.tokenizer.gguf_vocab.read_gguf_tensors` (``gguf.GGUFReader`` would spend
seconds on a large vocabulary), the tensor data through a numpy memory map; the model is built on the
meta device and each tensor converted straight into the one the model keeps, so peak memory is the
model plus one tensor. What llama.cpp's converter changed is undone: Llama's q/k row order (see
:mod:`gptlab.model.gguf_names`) and Llama 3's RoPE scaling, stored as divisors in ``rope_freqs``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from gptlab.errors import GptlabError
from gptlab.model.config import GPTConfig
from gptlab.model.gguf_export import ACTIVATION_KEY, llama3_rope_factors
from gptlab.model.gpt import GPT, _SkipInit
from gptlab.model.gguf_names import ARCHS, ROPE_FREQS, from_pairs, gguf_name
from gptlab.model.quantize import Int4Linear, pack_nibbles
from gptlab.tokenizer import Tokenizer, load_tokenizer
from gptlab.tokenizer.gguf_vocab import GGUFTensorInfo, read_gguf_tensors

Q = gguf.GGMLQuantizationType
_FLOATS = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
_QUANTIZED = (Q.Q8_0, Q.Q4_0)
SUPPORTED_TYPES = (*_FLOATS, *_QUANTIZED)


def _tidy(value: float) -> float:
    """A float32 metadata value as the decimal it was written from (1e-5, not 9.99999974737875e-06)."""
    return float(f"{float(value):.7g}")


def config_from_gguf(metadata: dict[str, Any], tensors: dict[str, GGUFTensorInfo], source: str) -> GPTConfig:
    """The :class:`GPTConfig` a GGUF file's metadata and tensor table describe (checked, one-line errors)."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHS:
        raise GptlabError(f"{source}: architecture {arch!r} is not supported; gptlab reads {', '.join(ARCHS)}")

    def key(name: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{name}", default)
        if value is None:
            raise GptlabError(f"{source}: missing metadata {arch}.{name}")
        if isinstance(value, list):  # per-layer values (some converters write them): gptlab needs one
            if len(set(value)) != 1:
                raise GptlabError(f"{source}: {arch}.{name} differs between layers ({value[:4]}...); not supported")
            value = value[0]
        return value

    if "token_embd.weight" not in tensors:
        raise GptlabError(f"{source}: missing tensor token_embd.weight")
    emb, heads = int(key("embedding_length")), int(key("attention.head_count"))
    fields: dict[str, Any] = dict(
        vocab_size=tensors["token_embd.weight"].shape[0], context_length=int(key("context_length")), emb_dim=emb,
        n_heads=heads, n_layers=int(key("block_count")), drop_rate=0.0, tie_weights="output.weight" not in tensors,
    )
    kv_heads = int(key("attention.head_count_kv", heads))
    head_dim = int(key("attention.key_length", emb // heads))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise GptlabError(f"{source}: key and value heads of different sizes are not supported")
    ff = int(key("feed_forward_length"))
    if arch == "gpt2":
        fields.update(layer_norm_eps=_tidy(key("attention.layer_norm_epsilon", 1e-5)),
                      ff_dim=None if ff == 4 * emb else ff, qkv_bias=True,
                      activation=metadata.get(ACTIVATION_KEY, "gelu_tanh"))  # llama.cpp's gpt2 GELU is tanh's
    else:
        if int(key("rope.dimension_count", head_dim)) != head_dim:
            raise GptlabError(f"{source}: RoPE on part of each head ({key('rope.dimension_count')} of {head_dim} "
                              "values) is not supported")
        fields.update(
            norm="rmsnorm", positions="rope", mlp="gated", activation="silu", fused_qkv=False, ff_dim=ff,
            layer_norm_eps=_tidy(key("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=_tidy(key("rope.freq_base", 10000.0)),
            # Biases and q/k norms are optional in llama.cpp's loaders: their presence decides.
            qkv_bias="blk.0.attn_q.bias" in tensors, proj_bias="blk.0.attn_output.bias" in tensors,
            mlp_bias="blk.0.ffn_up.bias" in tensors, qk_norm="blk.0.attn_q_norm.weight" in tensors,
        )
        scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
        if scaling == "linear":
            fields["rope_scaling"] = {"rope_type": "linear", "factor": _tidy(key("rope.scaling.factor"))}
        elif scaling != "none":
            raise GptlabError(f"{source}: RoPE scaling {scaling!r} is not supported (gptlab reads none, linear, "
                              "and Llama 3's rope_freqs)")
    if kv_heads != heads:
        fields["n_kv_heads"] = kv_heads
    if head_dim * heads != emb:
        fields["head_size"] = head_dim
    try:
        return GPTConfig(**fields)
    except GptlabError as exc:  # GPTConfig names its field; say which file it came from
        raise GptlabError(f"{source}: {exc}") from None


def recover_llama3_scaling(factors: np.ndarray, cfg: GPTConfig, source: str) -> dict[str, Any] | None:
    """Llama 3's ``rope_scaling`` dict from llama.cpp's ``rope_freqs`` divisors (None if all are 1).

    The divisors between the two plateaus follow ``1 / ((1 - s) / factor + s)`` with ``s`` linear in
    ``1 / wavelength``: a line fitted through them gives ``original / (high - low)`` and
    ``low / (high - low)``; with ``low_freq_factor`` 1 (every published Llama 3.x) that is all four
    numbers. The result is checked by recomputing every divisor; anything else is refused.
    """
    factors = np.asarray(factors, dtype=np.float64)
    factor = float(factors.max())
    if np.allclose(factors, 1.0):
        return None
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    inv_wavelength = freqs.double().numpy() / (2 * math.pi)
    between = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    fail = GptlabError(f"{source}: {ROPE_FREQS} is not Llama 3's RoPE scaling with low_freq_factor 1 "
                       "(or has too few values between its plateaus to tell); gptlab cannot reproduce it")
    if between.sum() < 2:
        raise fail
    smooth = (1 / factors[between] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(inv_wavelength[between], smooth, 1)
    if intercept >= 0:
        raise fail
    high = 1 - 1 / intercept
    scaling = {"rope_type": "llama3", "factor": _tidy(factor), "low_freq_factor": 1.0,
               "high_freq_factor": round(high, 4), "original_max_position_embeddings": round(-slope / intercept)}
    try:
        again = llama3_rope_factors(cfg.replace(rope_scaling=scaling)).numpy()
    except GptlabError:
        raise fail from None
    if not np.allclose(again, factors, rtol=1e-4, atol=0):
        raise fail
    return scaling


def _check_type(info: GGUFTensorInfo, source: str) -> None:
    if info.type not in SUPPORTED_TYPES:
        name = Q(info.type).name if info.type in Q._value2member_map_ else f"#{info.type}"
        raise GptlabError(f"{source}: tensor {info.name} has type {name}; gptlab reads "
                          f"{', '.join(Q(t).name for t in SUPPORTED_TYPES)}")


def _raw(mapped: np.memmap, info: GGUFTensorInfo, source: str) -> np.ndarray:
    """The bytes of one tensor in the mapped file, after checking its type, block rows and extent."""
    _check_type(info, source)
    qtype = Q(info.type)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    count = math.prod(info.shape)
    if info.shape and info.shape[-1] % block:
        raise GptlabError(f"{source}: tensor {info.name} rows of {info.shape[-1]} are not whole {qtype.name} blocks")
    nbytes = count // block * size
    if info.offset + nbytes > mapped.size:
        raise GptlabError(f"{source}: tensor {info.name} runs past the end of the file (truncated?)")
    return mapped[info.offset:info.offset + nbytes]


def _read(mapped: np.memmap, info: GGUFTensorInfo, dtype: torch.dtype, source: str) -> torch.Tensor:
    """One tensor from the mapped file, converted (or dequantized) into a fresh ``dtype`` tensor."""
    raw = _raw(mapped, info, source)
    qtype = Q(info.type)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in _QUANTIZED:
        values = gguf.quants.dequantize(raw.reshape(-1, info.shape[-1] // block * size), qtype)
        return torch.from_numpy(values).reshape(info.shape).to(dtype)
    if qtype == Q.BF16:
        tensor = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(raw.view(np.float32 if qtype == Q.F32 else np.float16))
    # A copy either way: the model must not keep pages of a file that may be replaced later.
    return tensor.reshape(info.shape).to(dtype, copy=True)


_Q4_0_BLOCK, _Q4_0_BYTES = gguf.GGML_QUANT_SIZES[Q.Q4_0]


def q4_0_integers(raw: np.ndarray, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, d)`` of a Q4_0 matrix: ``q`` uint8 ``[rows, cols]`` in 0..15 and ``d`` float32 ``[rows, cols / 32]``.

    Each block is ``d`` (float16) then 16 bytes: byte ``j`` holds value ``j`` in its low nibble and value
    ``j + 16`` in its high one; the weight is ``(q - 8) * d``.
    """
    rows, cols = shape
    blocks = np.asarray(raw).reshape(-1, _Q4_0_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32).reshape(rows, cols // _Q4_0_BLOCK)
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 15, nibbles >> 4], axis=1).reshape(rows, cols)
    return torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(d)


def _int4_buffers(layer: Int4Linear, q: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """``layer``'s saved buffers for Q4_0 integers: rows padded (with zero weights) to the kernel's multiple."""
    pad = layer.qweight.size(0) - q.size(0)
    if pad:
        q = torch.cat([q, q.new_zeros(pad, q.size(1))])
        d = torch.cat([d, d.new_zeros(pad, d.size(1))])
    return {"qweight": pack_nibbles(q), "scales": d.contiguous(), "mins": (-8.0 * d).contiguous()}


def default_dtype(tensors: dict[str, GGUFTensorInfo]) -> torch.dtype:
    """The dtype a model is loaded in when none is asked for: bf16 if any tensor is quantized (a q8_0 file
    keeps some matrices in f16), else the token embedding's."""
    if any(t.type not in _FLOATS for t in tensors.values()):
        return torch.bfloat16
    return _FLOATS[Q(tensors["token_embd.weight"].type)]


def load_gguf(path: str | os.PathLike, dtype: torch.dtype | None = None,
              keep_int4: bool = True) -> tuple[GPT, Tokenizer]:
    """``(model, tokenizer)`` from a GGUF file, the model in eval mode on the CPU.

    ``dtype`` is what the float weights become (by default the file's float type, bf16 for a quantized
    file). With ``keep_int4``, Q4_0 linear layers stay 4-bit (:class:`Int4Linear`, group 32; a tied
    output head gets its own int4 copy of the Q4_0 embedding, as :func:`quantize_model` gives it) and
    the model is marked ``quantization = {"mode": "int4", "group_size": 32}``; otherwise they are
    dequantized too. Every tensor is checked (name, shape, type, nothing missing or left over).
    """
    path = Path(path)
    source = str(path)
    metadata, table = read_gguf_tensors(path)
    tensors = {t.name: t for t in table}
    if len(tensors) != len(table):
        raise GptlabError(f"{source}: a tensor name appears twice")
    for info in table:  # before reading any data: a file of another quantization fails at once
        _check_type(info, source)
    cfg = config_from_gguf(metadata, tensors, source)
    arch = metadata["general.architecture"]
    if ROPE_FREQS in tensors and arch != "llama":
        raise GptlabError(f"{source}: {ROPE_FREQS} in a {arch} file is not supported")
    tokenizer = load_tokenizer(path)  # first: a vocabulary gptlab cannot read fails before any weight is read
    extra = [metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom")]
    tokenizer.end_ids = tuple(int(i) for i in extra if i is not None)
    dtype = dtype or default_dtype(tensors)
    mapped = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable views, never written
    if ROPE_FREQS in tensors:
        factors = _read(mapped, tensors[ROPE_FREQS], torch.float32, source).numpy()
        cfg = cfg.replace(rope_scaling=recover_llama3_scaling(factors, cfg, source))
    with torch.device("meta"), _SkipInit():
        model = GPT(cfg)  # no memory and no random init: every tensor comes from the file
    linears = {f"{prefix}.weight" for prefix, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    state: dict[str, torch.Tensor] = {}
    int4: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer name -> (q, d) of its Q4_0 weight
    used = {ROPE_FREQS}
    for name, meta in model.state_dict().items():
        tied_head = name == "out_head.weight" and cfg.tie_weights
        key = gguf_name("tok_emb.weight" if tied_head else name)
        info = tensors.get(key)
        if info is None:
            raise GptlabError(f"{source}: missing tensor {key} (expected shape {list(meta.shape)})")
        if list(info.shape) != list(meta.shape):
            raise GptlabError(f"{source}: tensor {key} has shape {list(info.shape)}, but the metadata implies "
                              f"{list(meta.shape)}")
        if keep_int4 and info.type == Q.Q4_0 and name in linears:
            q, d = q4_0_integers(_raw(mapped, info, source), tuple(info.shape))
            if arch == "llama" and (".att.q_proj." in name or ".att.k_proj." in name):
                heads = cfg.n_heads if ".q_proj." in name else cfg.kv_heads
                q, d = from_pairs(q, heads).contiguous(), from_pairs(d, heads).contiguous()
            int4[name.removesuffix(".weight")] = (q, d)
        elif not tied_head:
            tensor = _read(mapped, info, dtype, source)
            if arch == "llama" and (".att.q_proj." in name or ".att.k_proj." in name):
                tensor = from_pairs(tensor, cfg.n_heads if ".q_proj." in name else cfg.kv_heads).contiguous()
            state[name] = tensor
        used.add(key)
    tie = cfg.tie_weights and "out_head" not in int4
    if tie:
        state["out_head.weight"] = state["tok_emb.weight"]
    for prefix, (q, d) in int4.items():
        parent_name, _, attr = prefix.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        layer = Int4Linear(linear.in_features, linear.out_features, linear.bias is not None, _Q4_0_BLOCK, "meta")
        setattr(parent, attr, layer)
        state.update({f"{prefix}.{k}": v for k, v in _int4_buffers(layer, q, d).items()})
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise GptlabError(f"{source}: unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected in all; "
                          f"not a {arch} layout gptlab knows)")
    del mapped
    model.load_state_dict(state, assign=True, strict=True)
    if tie:
        model.out_head.weight = model.tok_emb.weight  # assign=True replaced the shared Parameter; re-tie
    if int4:
        model.quantization = {"mode": "int4", "group_size": _Q4_0_BLOCK}
    return model.eval(), tokenizer
