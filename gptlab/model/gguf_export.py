"""Write a GPT and its tokenizer as one GGUF file, the format llama.cpp (and Ollama, LM Studio) run.

The architecture is the llama.cpp one that computes what the model does: ``gpt2`` for GPT-2's design,
``qwen3`` for q/k norms, ``qwen2`` for q/k/v biases alone, ``llama`` otherwise (it also carries
Llama 3's RoPE scaling, as a ``rope_freqs`` tensor). Hyperparameters, tensor names and layouts follow
llama.cpp's ``convert_hf_to_gguf.py`` (see :mod:`gptlab.model.gguf_names`). Weights are written as
``f32``, ``bf16``, ``q8_0`` or ``q4_0``; vectors (norms, biases) and GPT-2's position table stay float32
in every type, and a matrix whose rows do not split into 32-value blocks falls back to f16 in ``q8_0`` and
``q4_0``, as in llama.cpp's converter. The file is streamed tensor by tensor (peak memory: the model plus one tensor)
into a temporary file that replaces ``path`` only when complete.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from gptlab.errors import GptlabError
from gptlab.io import default_mode
from gptlab.model.config import GPTConfig
from gptlab.model.gguf_names import ROPE_FREQS, gguf_name, to_pairs
from gptlab.model.hf import config_to_hf
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.gguf_tokens import gguf_vocab_fields

Q = gguf.GGMLQuantizationType
OUTTYPES: dict[str, tuple[int, Q]] = {
    "f32": (gguf.LlamaFileType.ALL_F32, Q.F32),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, Q.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
    # 4-bit blocks of 32 (a scale and 32 values): what gptlab reads back as int4 layers, and llama.cpp runs.
    "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_0),
}
# Metadata llama.cpp does not know (it ignores unknown keys): lets gptlab read back exactly what it wrote.
ACTIVATION_KEY = "gptlab.activation"


def _refuse(cfg: GPTConfig, why: str) -> GptlabError:
    return GptlabError(f"this model cannot be written to GGUF: {why}")


def gguf_arch(cfg: GPTConfig) -> str:
    """llama.cpp's architecture for ``cfg`` (``gpt2``, ``llama``, ``qwen2`` or ``qwen3``), or a one-line error."""
    if cfg.family == "gpt2":
        config_to_hf(cfg, torch.float32)  # GPT2LMHeadModel's constraints are llama.cpp's gpt2's too
        return "gpt2"
    for field, value in (("norm", "rmsnorm"), ("mlp", "gated"), ("activation", "silu")):
        if getattr(cfg, field) != value:
            raise _refuse(cfg, f"it has {field}={getattr(cfg, field)!r}, llama.cpp's Llama/Qwen need {value!r}")
    llama3 = bool(cfg.rope_scaling) and cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type")) == "llama3"
    if cfg.qk_norm:
        # llama.cpp's qwen3 loads no output-projection or MLP biases, and no rope_freqs.
        if cfg.proj_bias or cfg.mlp_bias:
            raise _refuse(cfg, "q/k norms (qwen3) with biases on the output projection or MLP")
        if llama3:
            raise _refuse(cfg, "q/k norms (qwen3) with Llama 3 RoPE scaling")
        return "qwen3"
    if cfg.qkv_bias and not cfg.proj_bias and not cfg.mlp_bias and not llama3:
        return "qwen2"
    return "llama"  # every bias optional, rope_freqs supported


def _hyperparameters(cfg: GPTConfig, arch: str) -> dict[str, Any]:
    """``{arch}.*`` keys as llama.cpp's converter writes them for this architecture."""
    keys: dict[str, Any] = {
        "context_length": cfg.context_length,
        "embedding_length": cfg.emb_dim,
        "block_count": cfg.n_layers,
        "feed_forward_length": cfg.hidden_dim,
        "attention.head_count": cfg.n_heads,
        "attention.head_count_kv": cfg.kv_heads,
    }
    if arch == "gpt2":
        keys["attention.layer_norm_epsilon"] = cfg.layer_norm_eps
        return keys
    keys["attention.layer_norm_rms_epsilon"] = cfg.layer_norm_eps
    keys["rope.freq_base"] = float(cfg.rope_theta)
    keys["rope.dimension_count"] = cfg.head_dim
    if cfg.head_dim * cfg.n_heads != cfg.emb_dim:
        keys["attention.key_length"] = keys["attention.value_length"] = cfg.head_dim
    if arch == "llama":
        keys["vocab_size"] = cfg.vocab_size
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        keys["rope.scaling.type"] = "linear"
        keys["rope.scaling.factor"] = float(scaling["factor"])
    return keys


def llama3_rope_factors(cfg: GPTConfig) -> torch.Tensor:
    """Llama 3's RoPE scaling as llama.cpp stores it: per frequency, the number the angle is divided by."""
    s = cfg.rope_scaling or {}
    dim = cfg.head_dim
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    original = float(s["original_max_position_embeddings"])
    out = []
    for freq in freqs.tolist():  # in float64, as the converter computes them
        wavelength = 2 * math.pi / freq
        if wavelength < original / high:
            out.append(1.0)
        elif wavelength > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def _tensors(model: torch.nn.Module, arch: str) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """``(GGUF name, tensor maker)`` in file order; each maker gives one tensor in gptlab's [out, in] layout."""
    cfg: GPTConfig = model.cfg
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type")) == "llama3":
        yield ROPE_FREQS, lambda: llama3_rope_factors(cfg)
    for name, tensor in state.items():
        if name == "out_head.weight" and cfg.tie_weights:
            continue  # llama.cpp reuses token_embd when there is no output tensor
        if arch != "gpt2" and ".att.qkv." in name:  # a fused q/k/v of the Llama design: three tensors
            pieces = tensor.split([cfg.q_dim, cfg.kv_dim, cfg.kv_dim])
            for proj, piece in zip("qkv", pieces):
                part = name.replace(".att.qkv.", f".att.{proj}_proj.")
                yield _name(part), _maker(piece, arch, proj, cfg)
            continue
        proj = next((p for p in "qk" if f".att.{p}_proj." in name), "")
        yield _name(name), _maker(tensor, arch, proj, cfg)
        if arch == "gpt2" and name.endswith("att.qkv.weight") and not cfg.qkv_bias:
            # llama.cpp's gpt2 requires this bias; zeros compute exactly what the model does without it.
            yield _name(name.replace("weight", "bias")), lambda t=tensor: torch.zeros(t.shape[0])


def _name(name: str) -> str:
    try:
        return gguf_name(name)
    except KeyError:  # e.g. a LoRA adapter or quantization scales: merge or dequantize the model first
        raise GptlabError(f"this model cannot be written to GGUF: its tensor {name} has no llama.cpp name") from None


def _maker(tensor: torch.Tensor, arch: str, proj: str, cfg: GPTConfig) -> Callable[[], torch.Tensor]:
    if arch == "llama" and proj in ("q", "k"):
        heads = cfg.n_heads if proj == "q" else cfg.kv_heads
        return lambda: to_pairs(tensor, heads)
    return lambda: tensor


def _storage_type(name: str, shape: torch.Size, wanted: Q) -> Q:
    """The type ``name`` is stored in: float32 for vectors, norms and the position table (as llama.cpp's
    converter does), f16 for a q8_0/q4_0 matrix whose rows are not whole 32-value blocks, else ``wanted``."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd."):
        return Q.F32
    if wanted in (Q.Q8_0, Q.Q4_0) and shape[-1] % gguf.GGML_QUANT_SIZES[wanted][0]:
        return Q.F16
    return wanted


def _encode(tensor: torch.Tensor, qtype: Q) -> np.ndarray:
    """The tensor's bytes in GGUF type ``qtype`` (a numpy array whose ``tobytes`` is what the file holds)."""
    tensor = tensor.detach().cpu()
    if qtype == Q.F32:
        return tensor.float().contiguous().numpy()
    if qtype == Q.F16:
        return tensor.to(torch.float16).contiguous().numpy()
    if qtype == Q.BF16:  # torch rounds to nearest even, as gguf.quants does; numpy has no bfloat16
        return tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    return gguf.quants.quantize(tensor.float().contiguous().numpy(), qtype)


def _nbytes(shape: torch.Size, qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def write_gguf(model: torch.nn.Module, tokenizer: Tokenizer, path: str | os.PathLike, outtype: str = "f32",
               name: str = "gptlab") -> str:
    """Write ``model`` (a :class:`~gptlab.model.GPT`) and ``tokenizer`` to ``path`` as GGUF; returns the architecture.

    ``outtype`` is ``f32``, ``bf16``, ``q8_0`` or ``q4_0``; ``name`` goes into ``general.name``. The model and the
    tokenizer are checked before anything is written (:class:`GptlabError`, one line, for what llama.cpp
    cannot run or a tokenizer GGUF cannot hold); ``path`` is replaced atomically.
    """
    if outtype not in OUTTYPES:
        raise GptlabError(f"outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}")
    cfg: GPTConfig = model.cfg
    arch = gguf_arch(cfg)
    vocab = gguf_vocab_fields(tokenizer, cfg.vocab_size)
    file_type, wanted = OUTTYPES[outtype]
    if arch == "gpt2" and cfg.activation != "gelu_tanh":
        print("gptlab: note: llama.cpp's gpt2 computes GELU's tanh approximation; this model was trained with "
              "the exact GELU, so llama.cpp's outputs will differ slightly (gptlab reads the file exactly)",
              file=sys.stderr)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_name(name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in _hyperparameters(cfg, arch).items():
            _add(writer, f"{arch}.{key}", value)
        if arch == "gpt2":
            writer.add_string(ACTIVATION_KEY, cfg.activation)
        for key, value in vocab.items():
            _add(writer, key, value)
        plan = []
        for tensor_name, make in _tensors(model, arch):
            shape = make().shape  # cheap: views, except for the few permuted q/k matrices
            qtype = _storage_type(tensor_name, shape, wanted)
            writer.add_tensor_info(tensor_name, list(shape), np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
            plan.append((make, qtype))
        writer.write_header_to_file(path=Path(tmp))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for make, qtype in plan:
            writer.write_tensor_data(_encode(make(), qtype))
        writer.close()
        os.chmod(tmp, default_mode())  # mkstemp makes it 0600; the published file follows the umask
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return arch


def _add(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """One metadata value with the GGUF type llama.cpp reads it as (uint32 counts, float32 reals)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)
