"""What every ``gptlab bench`` target shares: interleaved timing, medians, and the result table.

Host load drifts, so a benchmark times ours and the reference in turn (ours, theirs, ours, ...) and
reports medians; only ratios measured side by side in one run mean anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Result:
    """One comparison: our figure, the reference's, their ratio and the target ratio."""

    name: str
    unit: str
    ours: float
    reference: float
    ours_label: str
    reference_label: str
    target: float
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    @property
    def ratio(self) -> float:
        """ours / reference (higher is better for both units used here)."""
        return self.ours / self.reference if self.reference else float("nan")

    @property
    def met(self) -> bool:
        """Whether the ratio reaches the target."""
        return self.ratio >= self.target

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ratio and met included."""
        return {**asdict(self), "ratio": round(self.ratio, 3), "met": self.met}


def interleaved(contenders: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each contender ``warmup`` times, then ``repeats`` rounds in turn; each call returns work/second."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            samples[name].append(fn())
    return samples


def median(values: list[float]) -> float:
    """The median, or NaN for no values (a contender that never ran)."""
    return statistics.median(values) if values else float("nan")


def format_table(results: list[Result]) -> str:
    """A fixed-width table: comparison, ours, reference, ratio, target, met."""
    width = max([26] + [len(r.name) + 2 for r in results])
    lines = [f"{'comparison':<{width}}{'ours':>10}{'reference':>11}{'ratio':>8}{'target':>8}  met  (ours / reference)"]
    for r in results:
        lines.append(
            f"{r.name:<{width}}{r.ours:>10.1f}{r.reference:>11.1f}{r.ratio:>7.2f}x{r.target:>7.1f}x  "
            f"{'yes' if r.met else 'NO ':<4} ({r.ours_label} / {r.reference_label}, {r.unit})"
        )
    lines.append("medians of every contender:")
    seen: set[int] = set()
    for r in results:
        if id(r.samples) in seen:  # the two training comparisons share one set of runs
            continue
        seen.add(id(r.samples))
        for name, values in r.samples.items():
            lines.append(f"  {r.name:<{width}}{name:<32}{median(values):>10.1f} {r.unit}")
    return "\n".join(lines)
