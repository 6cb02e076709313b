"""Weights in the Hugging Face format: read them into a :class:`GPT`, and write a GPT back.

This module knows the format (config translation, tensor names and layouts, the files); it does not
import the model class. :meth:`gptlab.model.GPT.from_pretrained` builds the model and has this module
fill it; :meth:`gptlab.model.GPT.save_pretrained` has it write one out.

A folder holds ``config.json`` and the weights: ``model.safetensors``, or shards listed in
``model.safetensors.index.json``, or the older pickled ``pytorch_model.bin`` (read with
``weights_only``). Two families of ``config.json`` are understood:

* GPT-2 (``GPT2LMHeadModel``). Its tensors differ from gptlab's in names (``h.0.attn.c_attn.weight``
  is ``blocks.0.att.qkv.weight``, with an optional ``transformer.`` prefix), in layout (GPT-2's
  ``Conv1D`` stores ``[in, out]``, ``nn.Linear`` ``[out, in]``) and in extras (``attn.bias`` /
  ``attn.masked_bias`` are constant mask buffers; a tied head may be missing).
* Llama (``LlamaForCausalLM``; Mistral without a sliding window), Qwen2 (q/k/v biases) and Qwen3
  (q/k norms). Same layout as gptlab's, other names (``model.layers.0.self_attn.q_proj.weight`` is
  ``blocks.0.att.q_proj.weight``); if gptlab's model fuses q, k and v, the three are stacked.

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
from gptlab.model.hub import HUB_MODELS, ensure_model, hub_repo

SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"

INDEX = "model.safetensors.index.json"
PYTORCH_INDEX = "pytorch_model.bin.index.json"

# GPT-2: gptlab name <- HF name (without the "transformer." prefix), and whether the HF tensor is a
# Conv1D [in, out] weight that must be transposed.
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
# Llama / Qwen: gptlab module <- HF module (without the "model." prefix); ".weight"/".bias" carry over.
_LLAMA_BLOCK_MAP = {
    "norm1": "input_layernorm",
    "att.q_proj": "self_attn.q_proj",
    "att.k_proj": "self_attn.k_proj",
    "att.v_proj": "self_attn.v_proj",
    "att.q_norm": "self_attn.q_norm",
    "att.k_norm": "self_attn.k_norm",
    "att.out_proj": "self_attn.o_proj",
    "norm2": "post_attention_layernorm",
    "ff.gate": "mlp.gate_proj",
    "ff.up": "mlp.up_proj",
    "ff.down": "mlp.down_proj",
}
_LLAMA_TOP_MAP = {"tok_emb": "embed_tokens", "final_norm": "norm", "out_head": "lm_head"}
# Constant buffers some checkpoints carry; they hold no learned values.
_IGNORED = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|layers\.\d+\.self_attn\.rotary_emb\.inv_freq)$")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
LLAMA_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
SUPPORTED = ("GPT2LMHeadModel", *LLAMA_TYPES.values())


def hf_names(name: str, cfg: GPTConfig) -> tuple[list[str], bool]:
    """The HF tensor name(s) (without prefix) behind gptlab parameter ``name``, and whether transposed.

    One name, except for a fused ``qkv`` of a Llama-format model: its q, k and v stacked in that order.
    """
    if cfg.family == "gpt2":
        if name in _TOP_MAP:
            hf, transposed = _TOP_MAP[name]
            return [hf], transposed
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if not match or match.group(2) not in _BLOCK_MAP:
            raise KeyError(name)
        hf, transposed = _BLOCK_MAP[match.group(2)]
        return [f"h.{match.group(1)}.{hf}"], transposed
    module, _, kind = name.rpartition(".")
    if module in _LLAMA_TOP_MAP:
        return [f"{_LLAMA_TOP_MAP[module]}.{kind}"], False
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if not match:
        raise KeyError(name)
    layer, part = match.groups()
    if part == "att.qkv":
        return [f"layers.{layer}.self_attn.{p}_proj.{kind}" for p in "qkv"], False
    if part not in _LLAMA_BLOCK_MAP:
        raise KeyError(name)
    return [f"layers.{layer}.{_LLAMA_BLOCK_MAP[part]}.{kind}"], False




# ---------------------------------------------------------------------------------------- config


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GPTConfig:
    """Translate a Hugging Face config dict (GPT-2, Llama, Mistral, Qwen2 or Qwen3) into a :class:`GPTConfig`."""
    model_type = hf.get("model_type", "gpt2")
    if model_type in LLAMA_TYPES:
        return _llama_config_from_hf(hf, source)
    if model_type != "gpt2":
        archs = hf.get("architectures") or [model_type]
        raise GptlabError(
            f"{source}: architecture {archs[0]!r} (model_type {model_type!r}) is not supported; "
            f"gptlab reads {', '.join(SUPPORTED)}"
        )
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


def _rope_from_hf(hf: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, rope_scaling)`` from either spelling: ``rope_theta`` + ``rope_scaling`` (the hub's
    files), or ``rope_parameters`` (what transformers 5 writes)."""
    params = hf.get("rope_parameters") or {}
    scaling = dict(hf.get("rope_scaling") or params)
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling.pop("rope_theta", None)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ("llama3", "linear"):
        raise GptlabError(
            f"{source}: rope_scaling type {kind!r} is not supported; gptlab implements llama3 and linear (or none)"
        )
    keep = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return theta, {"rope_type": kind, **{k: scaling[k] for k in keep if k in scaling}}


def _llama_config_from_hf(hf: dict[str, Any], source: str) -> GPTConfig:
    """A Llama / Mistral / Qwen2 / Qwen3 config dict as a :class:`GPTConfig` of the modern design."""
    model_type = hf["model_type"]
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise GptlabError(f"{source}: hidden_act {act!r} is not supported (expected silu)")
    if hf.get("use_sliding_window") or (model_type == "mistral" and hf.get("sliding_window") is not None):
        raise GptlabError(f"{source}: sliding-window attention is not supported (sliding_window must be null)")
    if int(hf.get("pretraining_tp", 1) or 1) != 1:
        raise GptlabError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported (expected 1)")
    try:
        heads = int(hf["num_attention_heads"])
        width = int(hf["hidden_size"])
        head_dim = hf.get("head_dim") or width // heads
        attention_bias = bool(hf.get("attention_bias", False))
        theta, scaling = _rope_from_hf(hf, source)
        return GPTConfig(
            vocab_size=int(hf["vocab_size"]),
            context_length=int(hf.get("max_position_embeddings", 2048)),
            emb_dim=width,
            n_heads=heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_size=None if head_dim * heads == width else int(head_dim),
            n_layers=int(hf["num_hidden_layers"]),
            ff_dim=int(hf["intermediate_size"]),
            drop_rate=float(hf.get("attention_dropout", 0.0)),
            layer_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_weights=bool(hf.get("tie_word_embeddings", False)),
            norm="rmsnorm", positions="rope", mlp="gated", activation="silu", fused_qkv=False,
            rope_theta=theta, rope_scaling=scaling,
            # Qwen2 has q/k/v biases and none on o_proj, whatever its config says; Llama and Qwen3 put
            # attention_bias on all four projections.
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            proj_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
        )
    except KeyError as exc:
        raise GptlabError(f"{source}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise GptlabError(f"{source}: bad value ({exc})") from None


def _check_exportable(cfg: GPTConfig, wanted: dict[str, Any], target: str) -> None:
    for field, value in wanted.items():
        if getattr(cfg, field) != value:
            raise GptlabError(
                f"this model cannot be saved as {target}: it has {field}={getattr(cfg, field)!r}, "
                f"{target} needs {value!r}"
            )


def _llama_config_to_hf(cfg: GPTConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The config dict of the Hugging Face class that computes what ``cfg`` does (Llama, Qwen2 or Qwen3)."""
    _check_exportable(cfg, {"norm": "rmsnorm", "mlp": "gated", "activation": "silu"}, "a Llama-family model")
    if cfg.qk_norm:
        model_type = "qwen3"
        _check_exportable(cfg, {"proj_bias": cfg.qkv_bias, "mlp_bias": False}, "Qwen3ForCausalLM")
    elif cfg.qkv_bias and not cfg.proj_bias and not cfg.mlp_bias:
        model_type = "qwen2"
    else:
        model_type = "llama"
        _check_exportable(cfg, {"proj_bias": cfg.qkv_bias}, "LlamaForCausalLM (attention_bias covers q, k, v and o)")
    hf: dict[str, Any] = {
        "architectures": [LLAMA_TYPES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length,
        "hidden_size": cfg.emb_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        "attention_dropout": cfg.drop_rate,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_weights,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if model_type == "llama":
        hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    elif model_type == "qwen3":
        hf.update(attention_bias=cfg.qkv_bias, use_sliding_window=False, sliding_window=None)
    else:
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf


def config_to_hf(cfg: GPTConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The ``config.json`` dict for ``cfg``: a ``GPT2Config`` (plus gptlab's qkv-bias flag) or a
    Llama / Qwen2 / Qwen3 config, whichever computes the same function."""
    if cfg.family != "gpt2":
        return _llama_config_to_hf(cfg, dtype)
    _check_exportable(cfg, {"norm": "layernorm", "mlp": "standard", "fused_qkv": True, "kv_heads": cfg.n_heads,
                            "head_dim": cfg.emb_dim // cfg.n_heads, "proj_bias": True, "mlp_bias": True},
                      "GPT2LMHeadModel")
    if cfg.activation not in ("gelu_tanh", "gelu"):
        raise GptlabError(f"this model cannot be saved as GPT2LMHeadModel: activation {cfg.activation!r}")
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

    def where(self, name: str) -> Path:
        """The file that holds tensor ``name``."""
        return self.path

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

    def where(self, name: str) -> Path:
        """The file that holds tensor ``name``."""
        return self.path

    def shape(self, name: str) -> list[int]:
        """The stored shape of tensor ``name``."""
        return list(self.tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor ``name``."""
        return self.tensors[name].dtype

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (mapped from the file)."""
        return self.tensors[name]



class _ShardedWeights:
    """Several weight files listed in an index (``model.safetensors.index.json``), opened as needed."""

    def __init__(self, index_path: Path, opener: type) -> None:
        self.path = index_path
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise GptlabError(f"{index_path}: not a valid weight index ({type(exc).__name__}: {exc})") from None
        self.weight_map: dict[str, str] = weight_map
        for shard in sorted(set(weight_map.values())):
            if not (index_path.parent / shard).is_file():
                raise GptlabError(f"{index_path}: shard {shard} is named in the index but missing from the folder")
        self.entries = list(weight_map)
        self._opener = opener
        self._files: dict[str, Any] = {}

    def _file(self, name: str) -> Any:
        shard = self.weight_map[name]
        if shard not in self._files:
            self._files[shard] = self._opener(self.path.parent / shard)
            if name not in self._files[shard].entries:
                raise GptlabError(f"{self.path.parent / shard}: tensor {name} is not in this shard, but the index says it is")
        return self._files[shard]

    def where(self, name: str) -> Path:
        """The shard file that holds tensor ``name``."""
        return self.path.parent / self.weight_map[name]

    def shape(self, name: str) -> list[int]:
        """The stored shape of tensor ``name``."""
        return self._file(name).shape(name)

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor ``name``."""
        return self._file(name).dtype(name)

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``, from its shard."""
        return self._file(name).read(name)


def _open_weights(directory: Path) -> _SafetensorsFile | _TorchBinFile | _ShardedWeights:
    if (directory / SAFETENSORS).is_file():
        return _SafetensorsFile(directory / SAFETENSORS)
    if (directory / INDEX).is_file():
        return _ShardedWeights(directory / INDEX, _SafetensorsFile)
    if (directory / PYTORCH_BIN).is_file():
        return _TorchBinFile(directory / PYTORCH_BIN)
    if (directory / PYTORCH_INDEX).is_file():
        return _ShardedWeights(directory / PYTORCH_INDEX, _TorchBinFile)
    raise GptlabError(f"{directory}: no {SAFETENSORS}, {INDEX} or {PYTORCH_BIN} in this folder")


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
    """A folder holding the model: ``name_or_dir`` itself, or the snapshot folder in the hub cache of a hub
    name or ``owner/name`` repository id (downloaded unless ``download`` is False)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if hub_repo(name) is not None:
        return ensure_model(name, download=download)
    raise GptlabError(
        f"model {name!r}: not a folder with config.json and {SAFETENSORS}, nor a hub name "
        f"({', '.join(HUB_MODELS)}) or repository id owner/name"
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
    prefix = "transformer." if cfg.family == "gpt2" else "model."

    # Index the file's tensors by their prefix-free HF name.
    stored: dict[str, str] = {}
    for key in weights.entries:
        short = key.removeprefix(prefix)
        if not _IGNORED.match(short):
            stored[short] = key
    if "lm_head.weight" not in stored and not cfg.tie_weights:
        raise GptlabError(f"{weights.path}: missing tensor lm_head.weight (config.json says tie_word_embeddings=false)")

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, meta in model.state_dict().items():
        if name == "out_head.weight" and cfg.tie_weights:
            continue  # the token embedding, tied below
        parts, transposed = hf_names(name, cfg)
        want = list(meta.shape[::-1] if transposed else meta.shape)
        if len(parts) > 1:  # a fused q/k/v: the three stacked, each checked on its own
            sizes = [cfg.q_dim, cfg.kv_dim, cfg.kv_dim]
            wants = [[n, *want[1:]] for n in sizes]
        else:
            wants = [want]
        keys = []
        for hf, part_want in zip(parts, wants):
            if hf not in stored:
                raise GptlabError(f"{weights.path}: missing tensor {prefix if cfg.family != 'gpt2' else ''}{hf} "
                                  f"(expected shape {part_want})")
            key = stored[hf]
            got = weights.shape(key)
            if got != part_want:
                raise GptlabError(
                    f"{weights.where(key)}: tensor {key} has shape {got}, but config.json implies {part_want}"
                )
            keys.append(key)
            used.add(hf)
        stored_dtype = weights.dtype(keys[0])
        target = dtype or (stored_dtype if stored_dtype.is_floating_point else torch.float32)
        if len(keys) == 1 and not transposed and target == stored_dtype:
            state[name] = weights.read(keys[0])  # straight from the file into the tensor the model keeps
            continue
        # Transposing, stacking or converting needs the raw bytes somewhere first. The kept tensor is
        # allocated before them, so they sit on top of the heap, where the next kept tensor reuses
        # their space, instead of leaving a hole per tensor below it.
        state[name] = torch.empty(meta.shape, dtype=target)
        row = 0
        for key in keys:
            raw = weights.read(key)
            rows = raw.shape[1] if transposed else raw.shape[0]
            state[name][row:row + rows].copy_(raw.t() if transposed else raw)
            row += rows
            del raw
    if cfg.family == "gpt2" and not cfg.qkv_bias:
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
        key = stored[unexpected[0]]
        raise GptlabError(f"{weights.where(key)}: unexpected tensor {key} ({len(unexpected)} unexpected in all; "
                          "does config.json match the weights?)")
    model.load_state_dict(state, assign=True, strict=True)
    if cfg.tie_weights:
        model.out_head.weight = model.tok_emb.weight  # assign=True replaced the shared Parameter; re-tie


def hf_state_dict(model: torch.nn.Module, prefix: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, tensor)`` pairs for a GPT ``model`` in its family's Hugging Face layout.

    GPT-2: Conv1D weights transposed, prefix ``transformer.``; Llama/Qwen: prefix ``model.``, a fused
    q/k/v split in three. The head is left out when it is tied to the token embedding.
    """
    cfg = model.cfg
    if prefix is None:
        prefix = "transformer." if cfg.family == "gpt2" else "model."
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if name == "out_head.weight":
            if not cfg.tie_weights:
                yield "lm_head.weight", tensor.contiguous()
            continue
        parts, transposed = hf_names(name, cfg)
        if len(parts) > 1:
            for hf, piece in zip(parts, tensor.split([cfg.q_dim, cfg.kv_dim, cfg.kv_dim])):
                yield prefix + hf, piece.contiguous()
            continue
        yield prefix + parts[0], (tensor.t() if transposed else tensor).contiguous()
        if cfg.family == "gpt2" and name.endswith("att.qkv.weight") and not cfg.qkv_bias:
            # GPT2LMHeadModel always has this bias; zeros make it compute exactly what gptlab does.
            yield prefix + parts[0].replace("weight", "bias"), torch.zeros(3 * cfg.emb_dim, dtype=tensor.dtype)


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Write a GPT ``model`` as ``config.json`` and ``model.safetensors`` into ``directory`` (each file atomically).

    The config names the Hugging Face class that computes the same function (``GPT2LMHeadModel``,
    ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` or ``Qwen3ForCausalLM``); a model none of them can
    express is refused before anything is written.
    """
    directory = Path(directory)
    dtype = model.tok_emb.weight.dtype
    hf_config = config_to_hf(model.cfg, dtype)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(hf_state_dict(model))
    fd, tmp = tempfile.mkstemp(prefix=f".{SAFETENSORS}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.chmod(tmp, default_mode())  # mkstemp makes it 0600; the published file follows the umask
        os.replace(tmp, directory / SAFETENSORS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_text(directory / "config.json", json.dumps(hf_config, indent=2) + "\n")
