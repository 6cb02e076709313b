"""Fine-tuning a GPT for text classification (the book's chapter 6): data, model, training, metrics."""

from gptlab.finetune.classify.config import ClassifyConfig
from gptlab.finetune.classify.data import (
    DataSpec,
    LabeledTexts,
    LabelMap,
    Splits,
    balanced_split,
    load_labeled,
    read_sms_spam,
)
from gptlab.finetune.classify.metrics import classification_metrics
from gptlab.finetune.classify.model import EnsembleClassifier, GPTClassifier, pad_batch, set_trainable
from gptlab.finetune.classify.store import load_classifier
from gptlab.finetune.classify.train import train_classifier

__all__ = [
    "ClassifyConfig",
    "DataSpec",
    "EnsembleClassifier",
    "GPTClassifier",
    "LabelMap",
    "LabeledTexts",
    "Splits",
    "balanced_split",
    "classification_metrics",
    "load_classifier",
    "load_labeled",
    "pad_batch",
    "read_sms_spam",
    "set_trainable",
    "train_classifier",
]
