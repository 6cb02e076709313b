"""The configuration of a pretraining run: defaults, config files (TOML or YAML), and durations.

Every knob of a run is a field of :class:`TrainConfig`; the model's shape is a preset plus overrides
(``model`` holds :class:`gptlab.model.GPTConfig` field names). A config file has the same keys, with the
model overrides in a ``[model]`` table. Unknown keys are errors that name the file and the key: a typo
must not silently train something else for an hour.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError


AUTO_WARMUP = -1
DEFAULT_WARMUP = 100
DEFAULT_TIME_BUDGET = "3m"
STOP_KEYS = ("max_steps", "epochs", "max_tokens", "time_budget")
OPTIMIZERS = ("adamw", "muon")  # built by gptlab.train.optim.make_optimizer


@dataclass
class TrainConfig:
    """All settings of a pretraining run (see ``gptlab pretrain --help`` for each)."""

    # What to train on, and with which tokenizer: "gpt2", "char", "bpe:N" (train an N-token BPE on the
    # training data first), or a tokenizer file.
    data: str = "python-stdlib"
    tokenizer: str = "bpe:4096"
    # Cap on characters read from a raw text source (0 = all); keeps the default run laptop-sized.
    max_chars: int = 8_000_000
    val_fraction: float = 0.1
    # The model: a preset from gptlab.model.PRESETS, plus GPTConfig field overrides.
    preset: str = "gpt-micro"
    model: dict[str, Any] = field(default_factory=dict)
    # Weight init: "gpt2" (N(0, 0.02), scaled residual projections; GPT-2/nanoGPT) or "torch" (PyTorch's
    # per-layer defaults, which the book's chapter 4-5 GPTModel uses: its first loss is ~10.98).
    init: str = "gpt2"
    # Batches: micro-batch per step and device; gradient accumulation reaches global_batch_tokens.
    batch_size: int = 16
    block_size: int = 0  # 0 = the model's context length
    global_batch_tokens: int = 0  # 0 = one micro-batch per optimizer step
    sampling: str = "random"  # "random" windows, or "epoch": the book's shuffled windows at `stride`
    stride: int = 0  # for sampling="epoch"; 0 = block_size
    # Optimisation.
    # For the small presets a CPU run can afford (a few hundred steps), with beta2 0.99 (nanoGPT's
    # small-model choice). Measured on the main job together with gpt-micro's new window, no dropout
    # and the exact GELU (3 minutes, a 2-core host): val 4.91 and 5.07 in two runs, against 5.73 with
    # 1e-3 / 0.95 and the old preset. GPT-2-size models want ~6e-4.
    lr: float = 3e-3
    min_lr: float = 3e-4
    # Linear warmup; -1 = auto: 100 steps, or a tenth of a run shorter than 1,000 steps (a short run
    # would otherwise end before it ever reached its learning rate).
    warmup_steps: int = AUTO_WARMUP
    weight_decay: float = 0.1
    # "muon": Muon on the blocks' weight matrices, AdamW on embeddings, head, gains, biases
    # (gptlab.train.muon), one learning rate and schedule for both; or "adamw" for every parameter.
    # Muon is the default: the main job's 3 minutes end at validation loss 4.53 and 4.55 with it (two
    # runs) against 5.07 with AdamW, although its steps are ~30% slower at this size.
    optimizer: str = "muon"
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # Stop conditions: whichever comes first (0 / "" = not set). A new run without any trains for
    # DEFAULT_TIME_BUDGET (see with_default_stop).
    max_steps: int = 0
    epochs: float = 0.0
    max_tokens: int = 0
    time_budget: str = ""
    # Evaluation, samples and checkpoints (in optimizer steps).
    eval_interval: int = 100
    eval_batches: int = 8
    # Windows per evaluation batch; 0 = the training batch (times the number of processes). Larger
    # batches make evaluation cheaper per token, which matters when small models evaluate often.
    eval_batch_size: int = 0
    # Also evaluate (eval mode) on this many fixed training batches, as the book's train loss is
    # measured; 0 = report the running mean of the training steps' losses instead.
    eval_train_batches: int = 0
    sample_prompt: str = ""
    sample_tokens: int = 80
    checkpoint_interval: int = 0  # 0 = at every evaluation
    keep_last: int = 2
    # Hardware.
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 autocast where the hardware has fast bf16) | bf16 | fp32
    compile: bool = False
    seed: int = 1337
    out: str = ""  # run folder; "" = runs/<data>-<time>

    def validate(self) -> None:
        """Raise :class:`GptlabError` naming the first field with a value that cannot work."""
        positive = ["batch_size", "eval_batches", "sample_tokens", "keep_last"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise GptlabError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.warmup_steps < AUTO_WARMUP:
            raise GptlabError(f"warmup_steps must be >= 0 (or -1 for auto), got {self.warmup_steps!r}")
        for name in ["max_steps", "max_tokens", "block_size", "global_batch_tokens", "stride",
                     "checkpoint_interval", "max_chars", "eval_train_batches", "eval_batch_size"]:
            if getattr(self, name) < 0:
                raise GptlabError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.eval_interval <= 0:
            raise GptlabError(f"eval_interval must be positive, got {self.eval_interval!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise GptlabError(f"val_fraction must be between 0 and 1, got {self.val_fraction!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise GptlabError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.sampling not in ("random", "epoch"):
            raise GptlabError(f"sampling must be 'random' or 'epoch', got {self.sampling!r}")
        if self.init not in ("gpt2", "torch"):
            raise GptlabError(f"init must be 'gpt2' or 'torch', got {self.init!r}")
        if self.optimizer not in OPTIMIZERS:
            raise GptlabError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise GptlabError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.epochs < 0:
            raise GptlabError(f"epochs must be >= 0, got {self.epochs!r}")
        parse_duration(self.time_budget)
        model_overrides(self.model, source="TrainConfig.model")  # a config built in code skips config_from_dict

    def has_stop(self) -> bool:
        """Whether any stop condition (steps, epochs, tokens, time) is set."""
        return bool(self.max_steps or self.epochs or self.max_tokens or parse_duration(self.time_budget))

    def with_default_stop(self) -> TrainConfig:
        """Give a run with no stop condition the default time budget (the main job's 3 minutes)."""
        if not self.has_stop():
            self.time_budget = DEFAULT_TIME_BUDGET
        return self

    def warmup_for(self, total_steps: int) -> int:
        """The warmup in steps for a run of ``total_steps`` (0 = not known yet)."""
        if self.warmup_steps != AUTO_WARMUP:
            return self.warmup_steps
        if total_steps and total_steps < 10 * DEFAULT_WARMUP:
            return max(1, total_steps // 10)
        return DEFAULT_WARMUP

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy of every field."""
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from a mapping; unknown keys or wrong types name ``source`` and the key."""
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise GptlabError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(_FIELDS))})")
    cfg = TrainConfig()
    for key, value in values.items():
        default = getattr(cfg, key)
        setattr(cfg, key, _coerce(key, value, default, source))
    return cfg


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return model_overrides(value, source) if key == "model" else dict(value)
    raise GptlabError(f"{source}: key {key!r} expects {type(default).__name__}, got {value!r}")


def _field_kind(annotation: Any) -> tuple[str, bool]:
    """``("int", True)`` for ``"int | None"``: a GPTConfig field's base type and whether None is allowed."""
    # A string while gptlab.model.config postpones its annotations; a class (``int``) if it ever stops.
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [part.strip() for part in text.split("|")]
    return parts[0].split("[")[0], "None" in parts


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "dict": "a table (dict)"}


def model_overrides(values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Check ``[model]`` overrides against :class:`gptlab.model.GPTConfig`'s fields and types; a typed copy.

    GPTConfig itself checks the sizes' values, but not every field's type: a ``qk_norm = "false"``
    (a non-empty string, so true) would silently build another model. Integers given for float
    fields (``rope_theta = 500000``) become floats, so a resumed run compares equal to its saved config.
    """
    from gptlab.model.config import GPTConfig

    fields = {f.name: f for f in dataclasses.fields(GPTConfig)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise GptlabError(
                f"{source}: unknown GPTConfig field {key!r} in the model settings (known: {', '.join(fields)})"
            )
        kind, nullable = _field_kind(fields[key].type)
        if value is None and nullable:
            out[key] = None
            continue
        ok = {
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "str": isinstance(value, str),
            "dict": isinstance(value, dict),
        }.get(kind, True)
        if not ok:
            allowed = _KIND_WORDS.get(kind, kind) + (" or none" if nullable else "")
            raise GptlabError(f"{source}: model field {key!r} expects {allowed}, got {value!r}")
        out[key] = float(value) if kind == "float" else dict(value) if kind == "dict" else value
    return out


def parse_model_value(key: str, raw: str, flag: str = "--model-set") -> Any:
    """The value of ``FIELD=RAW`` typed as GPTConfig's field ``key`` says (``6``, ``true``, ``rmsnorm``, ``none``).

    ``none``/``null`` is None for the fields that allow it (``n_kv_heads``, ``head_size``, ``ff_dim``,
    ``rope_scaling``); booleans take true/false in any case (Python's ``False`` too, which JSON would not
    read and which, kept as a string, would be true); a dict is JSON, e.g. ``rope_scaling={"rope_type":
    "linear", "factor": 2.0}``. Unknown fields and unreadable values are errors naming the flag.
    """
    from gptlab.model.config import GPTConfig

    fields = {f.name: f for f in dataclasses.fields(GPTConfig)}
    if key not in fields:
        raise GptlabError(f"{flag} {key}={raw}: unknown GPTConfig field {key!r} (known: {', '.join(fields)})")
    kind, nullable = _field_kind(fields[key].type)
    text = raw.strip()
    if nullable and text.lower() in ("none", "null"):
        return None
    try:
        if kind == "bool":
            words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
            return words[text.lower()]
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "dict":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
    except (KeyError, ValueError):
        allowed = _KIND_WORDS.get(kind, kind) + (" or none" if nullable else "")
        raise GptlabError(f"{flag} {key}={raw}: {key} expects {allowed}") from None
    if len(text) >= 2 and text[0] == text[-1] == '"':  # a JSON-quoted string, as earlier versions took
        return text[1:-1]
    return text


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) run config into a dict (keys not yet checked)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GptlabError(f"{path}: cannot read config file ({exc.strerror})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise GptlabError(f"{path}: config files must end in .toml, .yaml, .yml or .json")
    except GptlabError:
        raise
    except Exception as exc:  # each parser has its own error type; all mean "malformed file"
        raise GptlabError(f"{path}: malformed config file ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise GptlabError(f"{path}: a config file must be a table of key = value settings")
    return data


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``90``, ``90s``, ``5m``, ``1.5h``; ``""`` or ``"0"`` means none (0)."""
    if text in ("", None):
        return 0.0
    m = _DURATION.match(str(text))
    if not m:
        raise GptlabError(f"time budget {text!r} is not a duration like 90s, 5m or 1.5h")
    scale = {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[m.group(2)]
    return float(m.group(1)) * scale
