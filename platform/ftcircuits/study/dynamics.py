"""Circuit dynamics of a run: similarity over checkpoints, layer edge-change scores, robustness.

Reads the circuits ``jobs.circuits --run`` wrote (a summary table plus one circuit
file per task) and returns polars tables; ``jobs.analyze`` writes and plots them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from ftcircuits.circuits.compare import circuit_similarity, critical_layers, edge_changes, layer_scores
from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.io import circuit_mask, edges_table
from ftcircuits.circuits.selection import edge_count, select_circuit
from ftcircuits.integrity import read_parquet_checked
from ftcircuits.options import LayerVariant, choices
from ftcircuits.study.over_run import SUMMARY_FILE, read_run_circuit

HEADLINE_FILE = "headline.json"


def read_summary(out: Path) -> pl.DataFrame:
    """Return the summary table of a run's circuits (one row per unit), checked (DamagedFileError)."""
    path = Path(out) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run jobs.circuits --run first (with the same settings)")
    run = Path(out).parent.parent
    rebuild = f"python -m jobs.circuits --run {run} (with the same --set settings) writes it again"
    return read_parquet_checked(path, rebuild, {"key": pl.String, "model": pl.String, "ratio": pl.Float64})


def checkpoint_circuits(out: Path, summary: pl.DataFrame) -> list[tuple[int, pl.DataFrame]]:
    """Return (step, edges) of the run's checkpoint circuits, by step."""
    rows = summary.filter(pl.col("model") == "checkpoint").sort("step")
    if rows.height < 2:
        raise ValueError(f"dynamics need at least 2 checkpoint circuits, found {rows.height}")
    return [(step, read_run_circuit(out, key)[0]) for key, step in rows.select("key", "step").iter_rows()]


def similarity_over_steps(circuits: list[tuple[int, pl.DataFrame]], summary: pl.DataFrame) -> pl.DataFrame:
    """Return per step: node/edge Jaccard, edges added/removed and score Spearman vs base and vs previous."""
    base = circuits[0][1]
    rows = []
    for index, (step, edges) in enumerate(circuits):
        row = {"step": step}
        row |= {f"{k}_base": v for k, v in circuit_similarity(base, edges).items()}
        previous = circuit_similarity(circuits[index - 1][1], edges) if index else {}
        row |= {f"{k}_prev": previous.get(k) for k in ("node_jaccard", "edge_jaccard", "abs_score_spearman")}
        rows.append(row)
    metrics = summary.filter(pl.col("model") == "checkpoint").select(
        "step", "faithfulness", "circuit_accuracy", pl.col("model_accuracy").alias("accuracy")
    )
    return pl.DataFrame(rows).join(metrics, on="step", how="left").sort("step")


def layer_change(before: pl.DataFrame, after: pl.DataFrame, layers: int, k: int = 5) -> pl.DataFrame:
    """Return per (variant, layer) the edge-change score and whether it is critical by top-k / mean+std."""
    changes = edge_changes(before, after)
    parts = []
    for variant in choices(LayerVariant):
        scores = layer_scores(changes, layers, variant)
        top, spread = critical_layers(scores, "topk", min(k, layers)), critical_layers(scores, "mean_std")
        parts.append(
            scores.with_columns(
                variant=pl.lit(variant),
                critical_topk=pl.col("layer").is_in(top),
                critical_mean_std=pl.col("layer").is_in(spread),
            )
        )
    return pl.concat(parts).select("variant", "layer", "score", "critical_topk", "critical_mean_std")


def changed_circuit_edges(before: pl.DataFrame, after: pl.DataFrame) -> pl.DataFrame:
    """Return the edges of either circuit with their status (kept, added, removed), for drawing."""
    return edge_changes(before, after).select("source", "destination", "status", "delta")


DEGENERATE_KL = 1e-3  # nats: below this mean clean/corrupted KL, a model's output ignores the input


def input_dependence(summary: pl.DataFrame) -> pl.DataFrame:
    """Return per robustness model (base and baselines) how much its behaviour depends on the input, on the
    unperturbed split: mean clean/corrupted KL, the edge scores' std, and ``degenerate`` (KL below
    DEGENERATE_KL or scores all equal), which makes its circuit, and its robustness, meaningless."""
    unperturbed = summary.filter((pl.col("model") != "checkpoint") & (pl.col("ratio") == 0.0))
    return unperturbed.select(
        "model", "input_kl", "score_std",
        degenerate=(pl.col("input_kl") < DEGENERATE_KL) | (pl.col("score_std") == 0),
    )  # fmt: skip


def robustness(out: Path, summary: pl.DataFrame) -> pl.DataFrame:
    """Return per model (base or baseline) and perturbation ratio the node and edge Jaccard against its
    unperturbed circuit, with the model's input dependence (``input_dependence``) as columns."""
    rows = []
    robust = summary.filter(pl.col("model") != "checkpoint")
    if robust.is_empty():
        raise ValueError("no robustness circuits: run jobs.circuits --run with robustness.enabled=true")
    for (model,), group in robust.group_by("model", maintain_order=True):
        keys = dict(group.select("ratio", "key").iter_rows())
        if 0.0 not in keys:
            raise ValueError(f"no unperturbed circuit of the {model} model")
        reference = read_run_circuit(out, keys[0.0])[0]
        for ratio in sorted(r for r in keys if r > 0):
            similarity = circuit_similarity(reference, read_run_circuit(out, keys[ratio])[0])
            accuracy = group.filter(pl.col("ratio") == ratio)["model_accuracy"][0]
            rows.append({"model": model, "ratio": ratio, "node_jaccard": similarity["node_jaccard"],
                         "edge_jaccard": similarity["edge_jaccard"], "model_accuracy": accuracy})  # fmt: skip
    return pl.DataFrame(rows).join(input_dependence(summary), on="model", how="left", maintain_order="left")


ROBUSTNESS_GAP = 0.1  # the paper's claim holds when the base keeps this much more edge Jaccard on average


def robustness_against_baselines(robust: pl.DataFrame) -> pl.DataFrame:
    """Return per baseline the paper's comparison: mean edge Jaccard over the perturbation ratios of the
    base and of the baseline, their gap, the baseline's degeneracy flag, and ``keeps_gap`` (a baseline
    that is not degenerate and that the base beats by at least ROBUSTNESS_GAP)."""
    means = robust.group_by("model", maintain_order=True).agg(
        pl.col("edge_jaccard").mean().alias("mean_edge_jaccard"),
        pl.col("node_jaccard").mean().alias("mean_node_jaccard"),
        pl.col("degenerate").first(), pl.col("input_kl").first(),
    )  # fmt: skip
    base = means.filter(pl.col("model") == "base")
    if base.is_empty():
        raise ValueError("no robustness circuits of the base model")
    base_edge = base["mean_edge_jaccard"][0]
    return (
        means.filter(pl.col("model") != "base")
        .rename({"model": "baseline"})
        .with_columns(base_mean_edge_jaccard=pl.lit(base_edge))
        .with_columns(gap=pl.col("base_mean_edge_jaccard") - pl.col("mean_edge_jaccard"))
        .with_columns(keeps_gap=~pl.col("degenerate") & (pl.col("gap") >= ROBUSTNESS_GAP))
    )


def critical_by_variant(layer_change_table: pl.DataFrame, rule_column: str) -> dict[str, list[int]]:
    """Return each variant's critical layers under ``rule_column`` (critical_topk or critical_mean_std)."""
    return {
        variant: group.filter(pl.col(rule_column))["layer"].to_list()
        for (variant,), group in layer_change_table.group_by("variant", maintain_order=True)
    }


def headline_numbers(tables: dict[str, pl.DataFrame]) -> dict:
    """Return the study's headline: node vs edge similarity of the final circuit to the base, and more."""
    last = tables["similarity"].row(-1, named=True)
    headline = {
        "final_step": last["step"],
        "node_jaccard_final_vs_base": last["node_jaccard_base"],
        "edge_jaccard_final_vs_base": last["edge_jaccard_base"],
        "score_spearman_final_vs_base": last["score_spearman_base"],
        "abs_score_spearman_final_vs_base": last["abs_score_spearman_base"],
        "edges_added": last["edges_added_base"],
        "edges_removed": last["edges_removed_base"],
        "critical_layers_topk": critical_by_variant(tables["layer_scores"], "critical_topk"),
        "critical_layers_mean_std": critical_by_variant(tables["layer_scores"], "critical_mean_std"),
    }
    if "similarity_by_budget" in tables:
        headline["jaccard_final_vs_base_by_budget"] = tables["similarity_by_budget"].to_dicts()
    if "smallest_faithful_budget" in tables:
        headline["smallest_faithful_budget_by_step"] = dict(tables["smallest_faithful_budget"].iter_rows())
    if "robustness" in tables:
        mean = tables["robustness"].group_by("model", maintain_order=True).agg(pl.col("edge_jaccard").mean())
        for model, value in mean.iter_rows():
            headline[f"robustness_mean_edge_jaccard_{model}"] = value
        against = robustness_against_baselines(tables["robustness"])
        headline["degenerate_baselines"] = against.filter("degenerate")["baseline"].to_list()
        headline["baselines_keeping_the_gap"] = against.filter("keeps_gap")["baseline"].to_list()
    return headline


HEADLINE_BUDGETS = (0.01, 0.02, 0.05, 0.1, 0.2)  # Jaccard depends on the circuit's size: the headline at each


def similarity_by_budget(
    before: pl.DataFrame, after: pl.DataFrame, graph: Graph, budgets: Sequence[float] = HEADLINE_BUDGETS
) -> pl.DataFrame:
    """Return per budget the node and edge Jaccard of two circuits re-selected from their stored scores
    (top edges by |score|, dead nodes pruned, as discovery selects them) at that budget."""
    rows = []
    scores = [circuit_mask(edges, graph)[0] for edges in (before, after)]
    for budget in budgets:
        a, b = (edges_table(s, select_circuit(s, graph, "top", budget=budget), graph) for s in scores)
        similarity = circuit_similarity(a, b)
        rows.append({"budget": budget, "edges": edge_count(graph, budget),
                     "node_jaccard": similarity["node_jaccard"],
                     "edge_jaccard": similarity["edge_jaccard"]})  # fmt: skip
    return pl.DataFrame(rows)


FAITHFUL_AT = 0.8  # normalized faithfulness a circuit must reach to count as faithful


def faithfulness_by_checkpoint(out: Path, summary: pl.DataFrame) -> pl.DataFrame:
    """Return (step, budget, faithfulness) of every checkpoint circuit's faithfulness curve, as stored when
    its circuit was discovered with ``curve``; empty when none was."""
    rows = []
    for key, step in summary.filter(pl.col("model") == "checkpoint").select("key", "step").iter_rows():
        curve = read_run_circuit(out, key)[1].get("curve")
        if curve:
            rows += [{"step": step, "budget": b, "faithfulness": f}
                     for b, f in zip(curve["budgets"], curve["faithfulness"], strict=True)]  # fmt: skip
    return pl.DataFrame(rows, schema={"step": pl.Int64, "budget": pl.Float64, "faithfulness": pl.Float64})


def smallest_faithful_budget(curves: pl.DataFrame, level: float = FAITHFUL_AT) -> pl.DataFrame:
    """Return per step the smallest budget whose circuit reaches ``level`` normalized faithfulness (null
    when none does)."""
    return (
        curves.group_by("step")
        .agg(pl.col("budget").filter(pl.col("faithfulness") >= level).min().alias("smallest_faithful_budget"))
        .sort("step")
    )
