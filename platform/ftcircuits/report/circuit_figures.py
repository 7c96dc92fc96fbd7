"""Circuit figures (matplotlib, headless): similarity, layer scores, drawings, robustness, faithfulness."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ftcircuits.paths import atomic_file

STATUS_COLORS = {"kept": "0.55", "removed": "tab:red", "added": "tab:green"}  # drawing order
_HEAD = re.compile(r"^a(\d+)\.h(\d+)(?:<[qkv]>)?$")
_MLP = re.compile(r"^m(\d+)$")
_MLP_RAISE = 0.35  # lift the MLP above its layer's heads so head -> MLP edges stay visible


def _save(fig: plt.Figure, path: Path, dpi: int = 120) -> Path:
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def _floats(df: pl.DataFrame, column: str) -> np.ndarray:
    """Return a column as float64 with nulls as NaN (matplotlib leaves gaps there)."""
    return df[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def similarity_over_steps(similarity: pl.DataFrame, path: Path) -> Path:
    """Plot node/edge Jaccard vs the base model (solid) and vs the previous checkpoint (dashed)."""
    df = similarity.sort("step")
    steps = _floats(df, "step")
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for kind, color in (("node", "tab:blue"), ("edge", "tab:orange")):
        for ref, style in (("base", "-"), ("prev", "--")):
            col = f"{kind}_jaccard_{ref}"
            label = f"{kind} Jaccard vs {'base' if ref == 'base' else 'previous checkpoint'}"
            ax.plot(steps, _floats(df, col), style, color=color, marker="o", markersize=3, label=label)
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("Jaccard similarity")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "accuracy" in df.columns:
        accuracy = _floats(df, "accuracy")
        twin = ax.twinx()
        twin.plot(steps, accuracy, ":", color="black", marker="s", markersize=3, label="accuracy")
        if np.nanmax(accuracy, initial=0.0) <= 1.0:
            twin.set_ylim(0, 1)  # same scale as the Jaccard axis
        twin.set_ylabel("accuracy")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.set_title("Circuit similarity over fine-tuning")
    return _save(fig, path)


def ground_truth_agreement(similarity: pl.DataFrame, path: Path) -> Path:
    """Plot, per step, the method's agreement with exact patching (Pearson, Spearman of scores and of
    |scores|, top-5% overlap; left) and the node/edge Jaccard vs base of the method's circuits (solid)
    and the exact ones (dashed; right), from the analysis' similarity table with its ground-truth
    columns."""
    df = similarity.sort("step")
    steps = _floats(df, "step")
    fig, (agree, jaccard) = plt.subplots(1, 2, figsize=(10, 4))
    for column, label, color in (("truth_pearson", "Pearson", "tab:purple"),
                                 ("truth_spearman", "Spearman", "tab:green"),
                                 ("truth_abs_spearman", "Spearman of |score|", "tab:olive"),
                                 ("truth_top_overlap", "top-5% overlap", "tab:red")):  # fmt: skip
        agree.plot(steps, _floats(df, column), "-", color=color, marker="o", markersize=3, label=label)
    agree.set_title("method's edge scores vs exact patching")
    for kind, color in (("node", "tab:blue"), ("edge", "tab:orange")):
        for prefix, style, who in (("", "-", "method"), ("exact_", "--", "exact")):
            jaccard.plot(steps, _floats(df, f"{prefix}{kind}_jaccard_base"), style, color=color, marker="o",
                         markersize=3, label=f"{kind} Jaccard vs base ({who})")  # fmt: skip
    jaccard.set_title("circuits vs the base circuit: method and exact")
    for ax in (agree, jaccard):
        ax.set_ylim(min(0.0, np.nanmin(ax.get_ylim())), 1.02)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def layer_score_bars(
    scores: pl.DataFrame,
    path: Path,
    critical: Mapping[str, Sequence[int]] | None = None,
    title: str = "",
) -> Path:
    """Plot one bar panel per variant (bars per layer), highlighting that variant's critical layers."""
    variants = scores["variant"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(
        1, max(1, len(variants)), figsize=(3.4 * max(1, len(variants)), 3.2), squeeze=False
    )
    for ax, variant in zip(axes[0], variants, strict=False):
        part = scores.filter(pl.col("variant") == variant).sort("layer")
        layers = part["layer"].to_list()
        marked = set((critical or {}).get(variant, ()))
        colors = ["tab:red" if layer in marked else "tab:blue" for layer in layers]
        ax.bar(layers, _floats(part, "score"), color=colors)
        ax.set_title(variant, fontsize="medium")
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
        ax.tick_params(axis="x", labelsize="small")
        ax.grid(axis="y", alpha=0.3)
        if marked:
            ax.legend(handles=[Line2D([], [], color="tab:red", lw=6, label="critical")], fontsize="small")
    axes[0][0].set_ylabel("score")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _node_xy(name: str, layers: int, heads: int) -> tuple[float, float]:
    """Grid position: input at y=0, layer l at y=l+1 (heads, then the MLP), logits on top.

    input and logits sit midway between two head columns so that they never hide a head node.
    """
    mid = heads / 2 - 0.5 if heads % 2 == 0 else heads / 2
    if name == "input":
        return mid, 0.0
    if name == "logits":
        return mid, layers + 1.0
    if m := _HEAD.match(name):
        return float(m[2]), int(m[1]) + 1.0
    if m := _MLP.match(name):
        return heads + 0.5, int(m[1]) + 1.0 + _MLP_RAISE
    raise ValueError(f"unknown circuit node name: {name!r}")


def circuit_drawing(edges: pl.DataFrame, path: Path, layers: int, heads: int, title: str = "") -> Path:
    """Draw circuit edges on the layer x head grid, coloured by status (kept / added / removed)."""
    unknown = set(edges["status"].unique().to_list()) - set(STATUS_COLORS)
    if unknown:
        raise ValueError(f"unknown edge status(es): {sorted(unknown)}")
    top = layers + 1.0
    segments: dict[str, set] = {}  # status -> distinct (source xy, destination xy) after q/k/v collapse
    for status in STATUS_COLORS:
        part = edges.filter(pl.col("status") == status)
        names = zip(part["source"].to_list(), part["destination"].to_list(), strict=True)
        segments[status] = {(_node_xy(s, layers, heads), _node_xy(d, layers, heads)) for s, d in names}
    counts = dict(edges["status"].value_counts().iter_rows())

    width = min(22.0, max(6.0, 0.45 * (heads + 2) + 2))
    height = min(22.0, max(4.5, 0.45 * (layers + 2) + 1.5))
    fig, ax = plt.subplots(figsize=(width, height))
    grid = [(float(h), i + 1.0) for i in range(layers) for h in range(heads)]
    grid += [(heads + 0.5, i + 1.0 + _MLP_RAISE) for i in range(layers)]
    grid += [_node_xy("input", layers, heads), _node_xy("logits", layers, heads)]
    gx, gy = zip(*grid, strict=True)
    ax.scatter(gx, gy, s=6, color="0.85", zorder=1)

    handles, used = [], set()
    for status, color in STATUS_COLORS.items():
        pairs = segments[status]
        if pairs:
            alpha = float(np.clip(12 / np.sqrt(len(pairs)), 0.08, 0.9))
            ax.add_collection(
                LineCollection(list(pairs), colors=color, linewidths=0.7, alpha=alpha, zorder=2)
            )
            used.update(p for pair in pairs for p in pair)
        handles.append(Line2D([], [], color=color, lw=2, label=f"{status} ({counts.get(status, 0)})"))
    if used:
        ux, uy = zip(*used, strict=True)
        ax.scatter(ux, uy, s=max(6, 40 - layers - heads), color="black", zorder=3)

    ax.set_xlim(-1, heads + 1.5)
    ax.set_ylim(-0.7, top + 0.7)
    ax.set_yticks([0, *range(1, layers + 1), top], ["input", *(f"L{i}" for i in range(layers)), "logits"])
    ax.set_xticks([*range(heads), heads + 0.5], [*(f"h{h}" for h in range(heads)), "MLP"])
    size = "small" if max(layers, heads) <= 12 else "x-small"
    ax.tick_params(labelsize=size)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax.set_title(title)
    return _save(fig, path, dpi=110)


def robustness_curves(robustness: pl.DataFrame, path: Path) -> Path:
    """Plot edge Jaccard against the share of items replaced, one line per model."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for model in robustness["model"].unique(maintain_order=True).to_list():
        part = robustness.filter(pl.col("model") == model).sort("ratio")
        ax.plot(_floats(part, "ratio"), _floats(part, "edge_jaccard"), marker="o", markersize=3, label=model)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    ax.set_xlabel("share of items replaced")
    ax.set_ylabel("edge Jaccard vs original circuit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def faithfulness_by_budget(curves: pl.DataFrame, path: Path, title: str = "") -> Path:
    """Plot faithfulness against the share of edges kept (log x, in percent), one line per circuit."""
    df = curves.filter(pl.col("budget") > 0)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label in df["circuit"].unique(maintain_order=True).to_list():
        part = df.filter(pl.col("circuit") == label).sort("budget")
        xs = 100 * _floats(part, "budget")
        ax.plot(xs, _floats(part, "faithfulness"), marker="o", markersize=3, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("edges kept (% of graph, log scale)")
    ax.set_ylabel("faithfulness")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    ax.set_title(title)
    return _save(fig, path)


def jaccard_by_budget(table: pl.DataFrame, path: Path, title: str = "") -> Path:
    """Plot node and edge Jaccard (base vs final circuit) against the circuit's budget (log x, percent)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = 100 * _floats(table, "budget")
    for column, label in (("node_jaccard", "nodes"), ("edge_jaccard", "edges")):
        ax.plot(xs, _floats(table, column), marker="o", markersize=3, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_ylim(0, 1)
    ax.set_xlabel("circuit budget (% of edges, log scale)")
    ax.set_ylabel("Jaccard, base vs final")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    ax.set_title(title)
    return _save(fig, path)


def similarity_bands_figure(bands: pl.DataFrame, path: Path) -> Path:
    """Plot node and edge Jaccard vs the base over steps: the mean over seeds, a band of ± one std."""
    df = bands.sort("step")
    steps = _floats(df, "step")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for kind, color in (("node", "tab:blue"), ("edge", "tab:orange")):
        mean, std = (
            _floats(df, f"{kind}_jaccard_base_mean"),
            np.nan_to_num(_floats(df, f"{kind}_jaccard_base_std")),
        )
        ax.plot(steps, mean, color=color, marker="o", markersize=3, label=f"{kind} Jaccard vs base (mean)")
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, label="± std over seeds")
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("Jaccard similarity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"Circuit similarity over fine-tuning, {int(df['seeds'].max())} seeds")
    return _save(fig, path)
