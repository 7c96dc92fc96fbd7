"""Figures (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

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


def method_comparison(table: pl.DataFrame, path: Path, title: str = "") -> Path:
    """Plot, per task, each method's mean final accuracy (bar) with its std over seeds (error bar) and
    every seed's value (dots); ``table`` has the columns task, method, seed, accuracy."""
    tasks = table["task"].unique(maintain_order=True).to_list()
    methods = table["method"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5, 0.9 * len(methods)) * len(tasks), 3.8),
                             squeeze=False)  # fmt: skip
    for ax, task in zip(axes[0], tasks, strict=True):
        for x, method in enumerate(methods):
            values = 100 * table.filter((pl.col("task") == task) & (pl.col("method") == method))["accuracy"]
            if values.is_empty():
                continue
            std = values.std() if values.len() > 1 else 0.0
            ax.bar(x, values.mean(), 0.7, yerr=std, capsize=4, color=f"C{x}", alpha=0.8)
            ax.scatter([x] * values.len(), values.to_list(), color="black", s=10, zorder=3)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(f"{task}{': ' + title if title else ''}")
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
