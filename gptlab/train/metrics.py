"""Run metrics: one JSON line per evaluation in ``metrics.jsonl``, and PNG plots of the curves."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptlab.io import atomic_write_bytes


class MetricsLog:
    """Appends evaluation records to ``metrics.jsonl``; on resume, drops records past the checkpoint."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        """Append one record (a flat dict of numbers and strings) as a JSON line, flushed to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """All complete records (a torn last line from a crash is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step <= step`` (used when resuming from a checkpoint)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def plot_curves(
    records: list[dict],
    path: str | os.PathLike,
    x: str = "tokens",
    series: tuple[str, ...] = ("train_loss", "val_loss"),
    title: str = "loss",
    ylabel: str = "loss",
) -> None:
    """Draw ``series`` against ``x`` from the metric records into a PNG at ``path`` (atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name in series:
        pts = [(r[x], r[name]) for r in records if r.get(name) is not None and r.get(x) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=name.replace("_", " "))
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
