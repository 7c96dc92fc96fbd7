"""The attribution comparison's figure: faithfulness against edge budget per method."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

from ftcircuits.paths import atomic_file


def attribution_curves(table: pl.DataFrame, path: Path) -> Path:
    """Plot faithfulness against budget (log x), a line per method, a panel per (checkpoint, intervention);
    ``table`` has checkpoint, step, intervention, method, budgets and faithfulness_by_budget (lists)."""
    checkpoints = table.select("checkpoint", "step").unique(maintain_order=True).rows()
    interventions = table["intervention"].unique(maintain_order=True).to_list()
    methods = table["method"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(checkpoints), len(interventions), figsize=(4.2 * len(interventions),
                             3.4 * len(checkpoints)), squeeze=False, sharex=True, sharey=True)  # fmt: skip
    for (checkpoint, step), row in zip(checkpoints, axes, strict=True):
        for intervention, ax in zip(interventions, row, strict=True):
            here = (pl.col("checkpoint") == checkpoint) & (pl.col("intervention") == intervention)
            panel = table.filter(here)
            for cell in panel.iter_rows(named=True):
                color = f"C{methods.index(cell['method'])}"
                style = "--" if cell["method"] == "exact" else "-"
                ax.plot(cell["budgets"], cell["faithfulness_by_budget"], style, marker="o", markersize=3,
                        color=color, label=f"{cell['method']} (CPR {cell['cpr']:.2f})")  # fmt: skip
            ax.axhline(1.0, color="grey", linewidth=0.6)
            ax.set_xscale("log")
            ax.set_title(f"{checkpoint} (step {step}), {intervention}", fontsize=10)
            ax.set_xlabel("budget (share of edges)")
            ax.set_ylabel("faithfulness")
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
