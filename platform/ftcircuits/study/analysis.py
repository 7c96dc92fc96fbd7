"""The analysis stage: a run's circuit dynamics, from the circuits ``cluster.run_circuits`` found with the
same settings, written as parquet tables, PNG figures and a headline (``<circuits>/analysis``), and
logged to MLflow."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ftcircuits.circuits.graph import Graph
from ftcircuits.config.discovery import AnalysisSettings, CircuitRunSettings
from ftcircuits.console import result_tables
from ftcircuits.models.loader import model_skeleton
from ftcircuits.paths import atomic_file
from ftcircuits.report import circuit_figures as figures
from ftcircuits.run_layout import ANALYSIS_DIR
from ftcircuits.study import dynamics, ground_truth
from ftcircuits.study.explorer import EXPLORER_FILE, write_explorer
from ftcircuits.study.over_run import RunInputs, circuits_dir, ground_truth_settings, run_inputs
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run


@dataclass(frozen=True)
class RunAnalysis:
    """One run's analysis: where it is written, its tables and headline, and its figures."""

    directory: Path
    tables: dict[str, pl.DataFrame] = field(repr=False)
    headline: dict = field(repr=False)
    figures: list[Path] = field(default_factory=list)
    explorer: Path | None = None  # the interactive page, with analysis.explorer
    mlflow: tuple[str, str] | None = None  # (tracking URI, run id) of its MLflow run

    def describe(self) -> str:
        """Return the tables and headline a person reads at the end of the stage."""
        parts = []
        with result_tables(tbl_width_chars=200):
            columns = ("node_jaccard_base", "edge_jaccard_base", "node_jaccard_prev", "edge_jaccard_prev")
            similarity = self.tables["similarity"]
            parts.append(str(similarity.select("step", *columns, "abs_score_spearman_base", "accuracy")))
            if "truth_pearson" in similarity.columns:
                exact = ("exact_node_jaccard_base", "exact_edge_jaccard_base", "exact_faithfulness")
                parts.append(str(similarity.select("step", pl.col("^truth_.*$"), *exact)))
            if "robustness" in self.tables:
                parts.append(
                    str(self.tables["robustness"].pivot("model", index="ratio", values="edge_jaccard"))
                )
                parts.append(str(self.tables["robustness_baselines"]))
            parts.append(str(self.tables["similarity_by_budget"]))
            if "smallest_faithful_budget" in self.tables:
                parts.append(str(self.tables["smallest_faithful_budget"]))
        parts.append(headline_text(self.headline))
        parts.append(f"tables and figures: {self.directory} ({', '.join(p.name for p in self.figures)})")
        if self.explorer is not None:
            parts.append(f"circuit explorer: {self.explorer}")
        return "\n".join(parts)


HEADLINE_TABLES = ("jaccard_final_vs_base_by_budget", "smallest_faithful_budget_by_step")
"""Headline entries the stage's description shows as tables already (similarity_by_budget,
smallest_faithful_budget)."""


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def headline_text(headline: dict, width: int = 110) -> str:
    """Return the headline as ``key: value`` entries (compact JSON values, 4 decimals) joined by "; " into
    lines of about ``width`` characters, leaving out what the description shows as tables
    (HEADLINE_TABLES); the headline file holds it all."""
    entries = [f"{key}: {json.dumps(_rounded(value))}" for key, value in headline.items()
               if key not in HEADLINE_TABLES]  # fmt: skip
    lines: list[str] = []
    for entry in entries:
        if lines and len(lines[-1]) + 2 + len(entry) <= width:
            lines[-1] += f"; {entry}"
        else:
            lines.append(entry)
    return "\n".join(lines)


def analysis_dir(run: Path, settings: CircuitRunSettings) -> Path:
    """Return where the analysis of ``run``'s circuits under ``settings`` is written."""
    return circuits_dir(run, settings, run_inputs(run)) / ANALYSIS_DIR


def dynamics_tables(
    out: Path, settings: CircuitRunSettings, analysis: AnalysisSettings, layers: int, graph: Graph,
    truth: Path | None = None,
) -> tuple[dict[str, pl.DataFrame], int, int]:  # fmt: skip
    """Return the dynamics tables of the circuits in ``out``, and the first and last checkpoint steps; with
    ``truth`` (the exact circuits' directory) the similarity table has the ground-truth columns
    (``study.ground_truth``)."""
    summary = dynamics.read_summary(out)
    circuits = dynamics.checkpoint_circuits(out, summary)
    (first_step, base), (last_step, final) = circuits[0], circuits[-1]
    similarity = dynamics.similarity_over_steps(circuits, summary)
    if truth is not None:
        exact, faithfulness = ground_truth.exact_checkpoint_circuits(truth, [step for step, _ in circuits])
        agreement = ground_truth.agreement_over_steps(circuits, exact).join(faithfulness, on="step")
        similarity = similarity.join(agreement, on="step", how="left")
    tables = {
        "similarity": similarity,
        "layer_scores": dynamics.layer_change(base, final, layers, analysis.critical_count(layers)),
        "edge_changes": dynamics.changed_circuit_edges(base, final),
        "similarity_by_budget": dynamics.similarity_by_budget(base, final, graph),
    }
    curves = dynamics.faithfulness_by_checkpoint(out, summary)
    if not curves.is_empty():
        tables["faithfulness_by_budget"] = curves
        tables["smallest_faithful_budget"] = dynamics.smallest_faithful_budget(curves)
    if settings.robustness.enabled:
        tables["robustness"] = dynamics.robustness(out, summary)
        tables["robustness_baselines"] = dynamics.robustness_against_baselines(tables["robustness"])
    return tables, first_step, last_step


def dynamics_figures(
    tables: dict[str, pl.DataFrame], analysis: Path, layers: int, heads: int, change: str
) -> list[Path]:
    """Draw the analysis figures into ``analysis``; return their paths."""
    critical = dynamics.critical_by_variant(tables["layer_scores"], "critical_topk")
    plots = [
        figures.similarity_over_steps(tables["similarity"], analysis / "similarity.png"),
        figures.layer_score_bars(tables["layer_scores"], analysis / "layer_scores.png", critical,
                                 f"edge change, {change}"),
        figures.circuit_drawing(tables["edge_changes"], analysis / "circuit_changes.png", layers, heads,
                                change),
        figures.jaccard_by_budget(tables["similarity_by_budget"], analysis / "jaccard_by_budget.png", change),
    ]  # fmt: skip
    if "faithfulness_by_budget" in tables:
        labelled = tables["faithfulness_by_budget"].with_columns(circuit=pl.format("step {}", "step"))
        plots.append(figures.faithfulness_by_budget(labelled, analysis / "faithfulness_by_checkpoint.png",
                                                    "every checkpoint's circuit"))  # fmt: skip
    if "truth_pearson" in tables["similarity"].columns:
        plots.append(figures.ground_truth_agreement(tables["similarity"], analysis / "ground_truth.png"))
    if "robustness" in tables:
        plots.append(figures.robustness_curves(tables["robustness"], analysis / "robustness.png"))
    return plots


def run_directories(run: Path, settings: CircuitRunSettings) -> tuple[RunInputs, Path, Path | None]:
    """Return ``run``'s inputs (checked), the directory of its circuits under ``settings``, and that of their
    exact circuits with ``settings.ground_truth`` (else None)."""
    inputs = run_inputs(run)
    truth = circuits_dir(run, ground_truth_settings(settings), inputs) if settings.ground_truth else None
    return inputs, circuits_dir(run, settings, inputs), truth


def run_explorer(
    run: Path, settings: CircuitRunSettings, tables: dict[str, pl.DataFrame],
    others: Mapping[str, Path] | None = None,
) -> Path:  # fmt: skip
    """Write (or rewrite) the explorer page of ``run``'s circuits under ``settings`` into their analysis
    directory, with the analysis' ``tables`` (critical layers, accuracy and faithfulness per step), the
    exact circuits with ``settings.ground_truth``, and ``others`` (label -> circuit file stem over the same
    graph, e.g. a CircuitLoRA run's final checkpoint) to set side by side; return its path."""
    inputs, out, truth = run_directories(run, settings)
    title = f"{Path(run).name}: {Path(inputs.base_model).name}, circuits over fine-tuning"
    graph = Graph.of(model_skeleton(inputs.base_model)[1])
    return write_explorer(out, graph, title, out / ANALYSIS_DIR / EXPLORER_FILE, ground_truth=truth,
                          layer_scores=tables["layer_scores"], similarity=tables["similarity"],
                          others=others)  # fmt: skip


def analyze_run(run: Path, settings: CircuitRunSettings, analysis: AnalysisSettings) -> RunAnalysis:
    """Analyse the circuits of ``run`` found under ``settings``: write every table, figure and the headline
    to ``<circuits>/analysis``, log them to MLflow (experiment ``analysis``), and return them."""
    inputs, out, truth = run_directories(run, settings)
    architecture = model_skeleton(inputs.base_model)[1]  # shapes only: no weights are read
    tables, first_step, last_step = dynamics_tables(
        out, settings, analysis, architecture.layers, Graph.of(architecture), truth
    )
    directory = out / ANALYSIS_DIR
    directory.mkdir(exist_ok=True)
    for name, table in tables.items():
        with atomic_file(directory / f"{name}.parquet") as tmp:
            table.write_parquet(tmp)
    plots = dynamics_figures(tables, directory, architecture.layers, architecture.heads,
                             f"step {first_step} -> {last_step}")  # fmt: skip
    headline = dynamics.headline_numbers(tables)
    if truth is not None:
        headline |= ground_truth.ground_truth_headline(tables["similarity"])
    with atomic_file(directory / dynamics.HEADLINE_FILE) as tmp:
        tmp.write_text(json.dumps(headline, indent=1))
    page = run_explorer(run, settings, tables) if analysis.explorer else None
    params = settings.model_dump(mode="json") | {
        "run": str(run),
        "analysis": analysis.model_dump(mode="json"),
    }
    uri, run_id = create_run(run, "analysis", f"{Path(run).name}-analysis", params, "analysis")
    logger = RunLogger(uri, run_id)
    for key, value in headline.items():
        if isinstance(value, float):
            logger.metric(key, value, step=last_step)
    logger.artifact(directory, ANALYSIS_DIR)
    logger.finish()
    return RunAnalysis(directory, tables, headline, plots, page, (uri, run_id))


def rewrite_explorer(
    analysis: RunAnalysis, run: Path, settings: CircuitRunSettings, others: Mapping[str, Path]
) -> Path:
    """Rewrite the explorer page of ``analysis`` (``analyze_run`` of ``run`` under ``settings``) with
    ``others`` set beside its checkpoints (``run_explorer``), and log it again to the analysis' MLflow run
    in place of the first; return its path."""
    page = run_explorer(run, settings, analysis.tables, others)
    if analysis.mlflow is not None:
        RunLogger(*analysis.mlflow).artifact(page, ANALYSIS_DIR)
    return page
