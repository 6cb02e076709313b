"""TF-IDF + logistic regression: the classic text-classification baseline, written out (no scikit-learn).

It follows scikit-learn's defaults (``TfidfVectorizer()`` + ``LogisticRegression()``) so its numbers are
comparable to the usual baseline: lowercase words of two or more word characters, smoothed idf
``ln((1 + n) / (1 + df)) + 1``, rows L2-normalised; L2-penalised logistic regression with C = 1
(sigmoid for two classes, softmax for more), the intercept unpenalised, fitted to convergence with L-BFGS.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import regex
import torch

_TOKEN = regex.compile(r"(?u)\b\w\w+\b")


class TfidfLogReg:
    """Fit on texts and labels (any hashable names), then predict names for new texts."""

    def __init__(self, c: float = 1.0) -> None:
        self.c = c
        self.vocab: dict[str, int] = {}
        self.idf: torch.Tensor | None = None
        self.classes: list = []
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def _counts(self, texts: Sequence[str]) -> torch.Tensor:
        x = torch.zeros(len(texts), len(self.vocab), dtype=torch.float64)
        for i, text in enumerate(texts):
            for tok, n in Counter(_TOKEN.findall(text.lower())).items():
                j = self.vocab.get(tok)
                if j is not None:
                    x[i, j] = n
        return x

    def transform(self, texts: Sequence[str]) -> torch.Tensor:
        """TF-IDF rows (L2-normalised) for ``texts``, over the vocabulary seen in :meth:`fit`."""
        x = self._counts(texts) * self.idf
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def fit(self, texts: Sequence[str], labels: Sequence) -> TfidfLogReg:
        """Build the vocabulary and idf on ``texts`` and fit the regression."""
        docs = [set(_TOKEN.findall(t.lower())) for t in texts]
        self.vocab = {tok: i for i, tok in enumerate(sorted(set().union(*docs)))}
        df = torch.zeros(len(self.vocab), dtype=torch.float64)
        for d in docs:
            for tok in d:
                df[self.vocab[tok]] += 1
        n = len(texts)
        self.idf = torch.log((1 + n) / (1 + df)) + 1
        x = self.transform(texts)
        self.classes = sorted(set(labels))
        y = torch.tensor([self.classes.index(v) for v in labels])
        k = 1 if len(self.classes) == 2 else len(self.classes)
        w = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            z = x @ w + b
            if k == 1:
                data = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y.double(), reduction="sum")
            else:
                data = torch.nn.functional.cross_entropy(z, y, reduction="sum")
            loss = self.c * data + 0.5 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        return self

    def predict(self, texts: Sequence[str]) -> list:
        """Predicted label names."""
        z = self.transform(texts) @ self.weight + self.bias
        ids = (z[:, 0] > 0).long() if z.shape[1] == 1 else z.argmax(1)
        return [self.classes[int(i)] for i in ids]


def accuracy(pred: Sequence, gold: Sequence) -> float:
    """Share of equal items."""
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if gold else math.nan
