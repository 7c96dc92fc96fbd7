"""Figures (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ftcircuits.paths import atomic_file


def accuracy_bars(series: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path:
    """Plot grouped accuracy bars, one group per task and one bar per series (e.g. base, fine-tuned)."""
    tasks = list(next(iter(series.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tasks)), 3.6))
    for i, (label, values) in enumerate(series.items()):
        xs = [t + i * width for t in range(len(tasks))]
        ax.bar(xs, [100 * values[t] for t in tasks], width, label=label)
    ax.set_xticks(
        [t + width * (len(series) - 1) / 2 for t in range(len(tasks))], tasks, rotation=30, ha="right"
    )
    ax.set_ylabel("accuracy on circuit split (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
