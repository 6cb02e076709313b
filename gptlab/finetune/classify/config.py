"""Settings of a classification fine-tuning run, checked against what can work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gptlab.errors import GptlabError

__all__ = ["ClassifyConfig"]


@dataclass
class ClassifyConfig:
    """Settings of one fine-tuning run (defaults: the book's chapter 6, except where noted)."""

    model: str = "gpt2"
    trainable: str = "last"  # head | last | all | lora
    last_blocks: int = 1
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: str = "all"
    lora_dropout: float = 0.0
    epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    warmup_frac: float = 0.0
    schedule: str = "constant"  # constant | cosine (decays to 10% after the warmup)
    grad_clip: float = 1.0
    max_length: int | None = None  # tokens per text (default: the model's context length)
    append_eot: bool = False  # end every text with <|endoftext|>, a fixed position for the prediction
    drop_rate: float | None = None  # override the model's dropout
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 123  # head initialisation, batch order, dropout
    eval_train_examples: int = 0  # evaluate on this many training examples per epoch (0 = all)
    threads: int | None = None
    # ULMFiT-style domain adaptation: first train the base model as a language model on the training
    # texts (no labels) for this many epochs, then fine-tune it as a classifier.
    lm_epochs: int = 0
    lm_lr: float = 1e-3
    # Fine-tune this many classifiers (seeds seed, seed + 1, ...) from the same base model and average
    # their probabilities: steadier predictions on the hard examples, at k times the fine-tuning cost.
    ensemble: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise GptlabError, naming the flag, on a setting that cannot work."""
        if self.trainable not in ("head", "last", "all", "lora"):
            raise GptlabError(f"--trainable {self.trainable!r}: expected head, last, all or lora")
        for name in ("epochs", "batch_size", "lora_rank", "last_blocks", "ensemble"):
            if getattr(self, name) < 1:
                raise GptlabError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise GptlabError(f"--threads must be at least 1, got {self.threads}")
        # Written as "not (ok)" so that nan, which every comparison rejects, fails too.
        for name in ("lr", "lm_lr", "lora_alpha"):
            if not 0 < getattr(self, name) < math.inf:
                raise GptlabError(f"{_flag(name)} must be a positive number, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if not 0 <= getattr(self, name) < math.inf:
                raise GptlabError(f"{_flag(name)} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.warmup_frac <= 1:
            raise GptlabError(f"--warmup must be a share of the steps between 0 and 1, got {self.warmup_frac}")
        for name in ("lora_dropout", "drop_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise GptlabError(f"{_flag(name)} must be at least 0 and below 1, got {value}")
        if self.eval_train_examples < 0:
            raise GptlabError(f"eval_train_examples must be 0 (all) or more, got {self.eval_train_examples}")
        if self.schedule not in ("constant", "cosine"):
            raise GptlabError(f"--schedule {self.schedule!r}: expected constant or cosine")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise GptlabError(f"--precision {self.precision!r}: expected auto, bf16 or fp32")
        if self.lm_epochs < 0:
            raise GptlabError(f"--lm-epochs must be 0 or more, got {self.lm_epochs}")
        if self.lm_epochs and self.trainable == "lora":
            raise GptlabError("--lm-epochs changes the base model, so it cannot be combined with LoRA adapters")
        if self.max_length is not None and self.max_length < 2:
            raise GptlabError(f"--max-length must be at least 2, got {self.max_length}")


# Fields whose ``classify train`` flag is not the field's name with dashes (grad_clip has no flag).
_FLAG_NAMES = {"warmup_frac": "--warmup", "drop_rate": "--dropout", "grad_clip": "grad_clip"}


def _flag(field_name: str) -> str:
    return _FLAG_NAMES.get(field_name, "--" + field_name.replace("_", "-"))
