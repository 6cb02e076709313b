"""Reading a finished run back in training tests: its weights and its metrics (shared by both designs' tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from gptlab.model.run_folder import latest_checkpoint


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The newest checkpoint's weights."""
    return load_file(str(latest_checkpoint(run_dir).path / "model.safetensors"))


def losses(run_dir: Path) -> list[tuple[int, float | None, float]]:
    """``(step, train loss, validation loss)`` of every evaluation in ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in rows]


def assert_same_weights(a: dict, b: dict) -> None:
    """Bit-identical tensors under the same names."""
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
