"""GPT-2 weights in the Hugging Face format: read them into a :class:`GPT`, and write a GPT back.

This module knows the format (config translation, tensor names and layouts, the files); it does not
import the model class. :meth:`gptlab.model.GPT.from_pretrained` builds the model and has this module
fill it; :meth:`gptlab.model.GPT.save_pretrained` has it write one out.

The format is a folder with ``config.json`` (a ``GPT2Config``) and ``model.safetensors`` (or the
older pickled ``pytorch_model.bin``). Its tensors differ from gptlab's in three ways, all undone here:

* names: ``h.0.attn.c_attn.weight`` is gptlab's ``blocks.0.att.qkv.weight`` (and an optional
  ``transformer.`` prefix comes and goes with the model class that saved it);
* layout: GPT-2's ``Conv1D`` stores weights as ``[in, out]``, ``nn.Linear`` as ``[out, in]``;
* extras: ``attn.bias`` / ``attn.masked_bias`` are constant causal-mask buffers, not weights, and a tied
  output head may be missing (``lm_head.weight`` is then the token embedding).

Loading fills a model built on the meta device (no memory, no random init), reading each tensor from
the file straight into the storage it will keep, so peak memory is the model plus one tensor.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text, default_mode
from gptlab.model.config import GPTConfig
from gptlab.model.hub import HUB_MODELS, ensure_model

SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"

# gptlab name <- HF name (without the "transformer." prefix), and whether the HF tensor is a Conv1D
# [in, out] weight that must be transposed.
_BLOCK_MAP = {
    "norm1.weight": ("ln_1.weight", False),
    "norm1.bias": ("ln_1.bias", False),
    "att.qkv.weight": ("attn.c_attn.weight", True),
    "att.qkv.bias": ("attn.c_attn.bias", False),
    "att.out_proj.weight": ("attn.c_proj.weight", True),
    "att.out_proj.bias": ("attn.c_proj.bias", False),
    "norm2.weight": ("ln_2.weight", False),
    "norm2.bias": ("ln_2.bias", False),
    "ff.fc.weight": ("mlp.c_fc.weight", True),
    "ff.fc.bias": ("mlp.c_fc.bias", False),
    "ff.proj.weight": ("mlp.c_proj.weight", True),
    "ff.proj.bias": ("mlp.c_proj.bias", False),
}
_TOP_MAP = {
    "tok_emb.weight": ("wte.weight", False),
    "pos_emb.weight": ("wpe.weight", False),
    "final_norm.weight": ("ln_f.weight", False),
    "final_norm.bias": ("ln_f.bias", False),
    "out_head.weight": ("lm_head.weight", False),
}
# Constant buffers some GPT-2 checkpoints carry; they hold no learned values.
_IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def hf_name(name: str) -> tuple[str, bool]:
    """The HF tensor name (without prefix) for gptlab parameter ``name``, and whether it is transposed."""
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if not match or match.group(2) not in _BLOCK_MAP:
        raise KeyError(name)
    hf, transposed = _BLOCK_MAP[match.group(2)]
    return f"h.{match.group(1)}.{hf}", transposed


# ---------------------------------------------------------------------------------------- config


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GPTConfig:
    """Translate a Hugging Face ``GPT2Config`` dict into a :class:`GPTConfig`."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise GptlabError(f"{source}: model_type is {model_type!r}; gptlab reads GPT-2 models ('gpt2')")
    act = hf.get("activation_function", "gelu_new")
    if act not in (*_TANH_GELUS, "gelu"):
        raise GptlabError(f"{source}: activation_function {act!r} is not supported (expected gelu_new or gelu)")
    for flag, expected in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
        if hf.get(flag, expected) != expected:
            raise GptlabError(f"{source}: {flag}={hf[flag]!r} is not supported (expected {expected})")
    try:
        return GPTConfig(
            vocab_size=int(hf["vocab_size"]),
            context_length=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
            emb_dim=int(hf["n_embd"]),
            n_heads=int(hf["n_head"]),
            n_layers=int(hf["n_layer"]),
            drop_rate=float(hf.get("resid_pdrop", 0.1)),
            qkv_bias=bool(hf.get("gptlab_qkv_bias", True)),
            tie_weights=bool(hf.get("tie_word_embeddings", True)),
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            ff_dim=hf.get("n_inner"),
            activation="gelu" if act == "gelu" else "gelu_tanh",
        )
    except KeyError as exc:
        raise GptlabError(f"{source}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise GptlabError(f"{source}: bad value ({exc})") from None


def config_to_hf(cfg: GPTConfig, dtype: torch.dtype) -> dict[str, Any]:
    """A ``GPT2Config`` dict for ``cfg`` (what ``transformers`` writes, plus gptlab's qkv-bias flag)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_head": cfg.n_heads,
        "n_layer": cfg.n_layers,
        "n_inner": cfg.ff_dim,
        "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_weights,
        "torch_dtype": str(dtype).removeprefix("torch."),
        # GPT-2 always has a c_attn bias; a model trained without one is saved with zeros there, and
        # this flag lets gptlab restore qkv_bias=False (transformers ignores unknown keys).
        "gptlab_qkv_bias": cfg.qkv_bias,
    }


# ---------------------------------------------------------------------------------------- tensors

# The safetensors header's dtype codes that GPT-2 checkpoints use.
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class _SafetensorsFile:
    """``model.safetensors`` through the safetensors library, each tensor read on demand.

    The library checks the header (JSON, dtypes, offsets, a file cut short) when the file is opened.
    Its ``pread`` backend reads each tensor's bytes straight into the tensor that keeps them: no second
    copy, and no page-cache pages counted against the process, as mapping the file would.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = safe_open(path, framework="pt", backend="pread")
            self.entries: list[str] = list(self._file.keys())
        except SafetensorError as exc:
            raise self._corrupt(exc) from None

    def _corrupt(self, exc: Exception) -> GptlabError:
        why = str(exc).splitlines()[0].removeprefix("Error while deserializing header: ")
        return GptlabError(f"{self.path}: not a valid safetensors file, damaged or truncated ({why})")

    def shape(self, name: str) -> list[int]:
        """The stored shape of tensor ``name`` (from the header; nothing is read)."""
        return list(self._file.get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor ``name`` (from the header; nothing is read)."""
        code = self._file.get_slice(name).get_dtype()
        if code not in _ST_DTYPES:
            raise GptlabError(f"{self.path}: tensor {name!r} has dtype {code}, which gptlab does not read")
        return _ST_DTYPES[code]

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read from disk into a fresh tensor in its stored dtype."""
        try:
            return self._file.get_tensor(name)
        except SafetensorError as exc:  # the file changed since it was opened
            raise self._corrupt(exc) from None


class _TorchBinFile:
    """``pytorch_model.bin`` loaded with ``weights_only=True`` (no arbitrary unpickling) and memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for a bad zip/pickle
            raise GptlabError(f"{path}: cannot read PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise GptlabError(f"{path}: not a state dict of tensors")
        self.tensors: dict[str, torch.Tensor] = state
        self.entries = state

    def shape(self, name: str) -> list[int]:
        """The stored shape of tensor ``name``."""
        return list(self.tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor ``name``."""
        return self.tensors[name].dtype

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (mapped from the file)."""
        return self.tensors[name]



def _open_weights(directory: Path) -> _SafetensorsFile | _TorchBinFile:
    if (directory / SAFETENSORS).is_file():
        return _SafetensorsFile(directory / SAFETENSORS)
    if (directory / PYTORCH_BIN).is_file():
        return _TorchBinFile(directory / PYTORCH_BIN)
    raise GptlabError(f"{directory}: no {SAFETENSORS} or {PYTORCH_BIN} in this folder")


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptlabError(f"{directory}: no config.json in this folder") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise GptlabError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GptlabError(f"{path}: expected a JSON object")
    return data


# ---------------------------------------------------------------------------------------- load / save


def read_config(directory: str | os.PathLike) -> GPTConfig:
    """The :class:`GPTConfig` of a Hugging Face GPT-2 folder (its ``config.json``, translated and checked)."""
    directory = Path(directory)
    return config_from_hf(_read_config(directory), str(directory / "config.json"))


def resolve_model_dir(name_or_dir: str | os.PathLike, download: bool = True) -> Path:
    """A folder holding the model: ``name_or_dir`` itself, or a hub name's folder in the cache."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if name in HUB_MODELS:
        return ensure_model(name, download=download)
    raise GptlabError(
        f"model {name!r}: not a folder with config.json and {SAFETENSORS}, nor a known name "
        f"({', '.join(HUB_MODELS)})"
    )


def load_weights(model: torch.nn.Module, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Fill ``model`` (a GPT built on the meta device from :func:`read_config`) with a folder's weights.

    Every tensor is checked (name, shape, nothing missing or left over) and read straight into the
    storage the model keeps. ``dtype`` converts the weights as they are read (e.g. ``torch.bfloat16`` for
    fast CPU inference); by default they keep the file's dtype (integers become float32).
    """
    directory = Path(directory)
    cfg: GPTConfig = model.cfg
    weights = _open_weights(directory)

    # Index the file's tensors by their prefix-free HF name.
    stored: dict[str, str] = {}
    for key in weights.entries:
        short = key.removeprefix("transformer.")
        if not _IGNORED.match(short):
            stored[short] = key
    if "lm_head.weight" not in stored and not cfg.tie_weights:
        raise GptlabError(f"{weights.path}: missing tensor lm_head.weight (config.json says tie_word_embeddings=false)")

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, meta in model.state_dict().items():
        if name == "out_head.weight" and cfg.tie_weights:
            continue  # the token embedding, tied below
        hf, transposed = hf_name(name)
        want = list(meta.shape[::-1] if transposed else meta.shape)
        if hf not in stored:
            raise GptlabError(f"{weights.path}: missing tensor {hf} (expected shape {want})")
        key = stored[hf]
        got = weights.shape(key)
        if got != want:
            raise GptlabError(f"{weights.path}: tensor {key} has shape {got}, but config.json implies {want}")
        stored_dtype = weights.dtype(key)
        target = dtype or (stored_dtype if stored_dtype.is_floating_point else torch.float32)
        if not transposed and target == stored_dtype:
            state[name] = weights.read(key)  # straight from the file into the tensor the model keeps
        else:
            # Transposing or converting needs the raw bytes somewhere first. The kept tensor is
            # allocated before them, so they sit on top of the heap, where the next kept tensor reuses
            # their space, instead of leaving a hole per tensor below it.
            state[name] = torch.empty(meta.shape, dtype=target)
            raw = weights.read(key)
            state[name].copy_(raw.t() if transposed else raw)
            del raw
        used.add(hf)
    if not cfg.qkv_bias:
        # Saved by gptlab without a qkv bias: the stored zeros must really be zeros to drop them.
        for i in range(cfg.n_layers):
            bias_key = stored.get(f"h.{i}.attn.c_attn.bias")
            if bias_key is not None:
                used.add(f"h.{i}.attn.c_attn.bias")
                if weights.read(bias_key).any():
                    raise GptlabError(f"{weights.path}: {bias_key} is not zero but config.json has gptlab_qkv_bias=false")
    if cfg.tie_weights:
        state["out_head.weight"] = state["tok_emb.weight"]
        used.add("lm_head.weight")
    unexpected = sorted(set(stored) - used)
    if unexpected:
        raise GptlabError(f"{weights.path}: unexpected tensor {stored[unexpected[0]]} ({len(unexpected)} unexpected in all)")
    model.load_state_dict(state, assign=True, strict=True)
    if cfg.tie_weights:
        model.out_head.weight = model.tok_emb.weight  # assign=True replaced the shared Parameter; re-tie


def hf_state_dict(model: torch.nn.Module, prefix: str = "transformer.") -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, tensor)`` pairs for a GPT ``model`` in GPT-2's layout (Conv1D weights transposed)."""
    cfg = model.cfg
    for name, tensor in model.state_dict().items():
        if name == "out_head.weight":
            if not cfg.tie_weights:
                yield "lm_head.weight", tensor.detach().contiguous()
            continue
        hf, transposed = hf_name(name)
        tensor = tensor.detach()
        yield prefix + hf, (tensor.t() if transposed else tensor).contiguous()
        if name.endswith("att.qkv.weight") and not cfg.qkv_bias:
            # GPT2LMHeadModel always has this bias; zeros make it compute exactly what gptlab does.
            yield prefix + hf.replace("weight", "bias"), torch.zeros(3 * cfg.emb_dim, dtype=tensor.dtype)


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Write a GPT ``model`` as ``config.json`` and ``model.safetensors`` into ``directory`` (each file atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(hf_state_dict(model))
    dtype = model.tok_emb.weight.dtype
    fd, tmp = tempfile.mkstemp(prefix=f".{SAFETENSORS}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.chmod(tmp, default_mode())  # mkstemp makes it 0600; the published file follows the umask
        os.replace(tmp, directory / SAFETENSORS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_text(directory / "config.json", json.dumps(config_to_hf(model.cfg, dtype), indent=2) + "\n")
