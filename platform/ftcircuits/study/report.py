"""The report stage: the whole study's HTML report, read from the outputs the pipeline's stages leave: a
results section in prose with its figures and tables, then the exact configs, seeds and package versions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from ftcircuits.config.comparison import CompareConfig
from ftcircuits.config.loading import load_config
from ftcircuits.config.pipeline import PipelineConfig
from ftcircuits.integrity import check_png, read_json_with_keys, read_parquet_checked
from ftcircuits.paths import atomic_file
from ftcircuits.report.html import (
    Appendix,
    Figure,
    Report,
    ReportSection,
    Table,
    package_versions,
    render_report,
)
from ftcircuits.run_layout import read_run_record
from ftcircuits.study.dynamics import FAITHFUL_AT, HEADLINE_FILE, ROBUSTNESS_GAP
from ftcircuits.study.explorer import EXPLORER_FILE
from ftcircuits.tasks.spec import TaskSpec


@dataclass(frozen=True)
class StudyOutputs:
    """Where one pipeline run's results are (``pipeline``: its PipelineConfig)."""

    pipeline: PipelineConfig
    run: Path  # the LoRA run whose checkpoints' circuits are studied
    analysis: Path  # jobs.analyze's tables and figures of that run
    comparison: Path  # jobs.compare_methods' out
    accuracy: dict[str, dict[str, float]]  # model label -> task -> accuracy on the circuit split
    accuracy_figure: Path


# what the report reads of each analysis table (jobs.analyze's), and of the comparison's table
ANALYSIS_TABLES = {
    "similarity": {"step": pl.Int64, "node_jaccard_base": pl.Float64, "edge_jaccard_base": pl.Float64},
    "similarity_by_budget": {"budget": pl.Float64, "node_jaccard": pl.Float64, "edge_jaccard": pl.Float64},
    "smallest_faithful_budget": {"step": pl.Int64, "smallest_faithful_budget": pl.Float64},
    "robustness_baselines": {"baseline": pl.String, "keeps_gap": pl.Boolean},
}
COMPARISON_SCHEMA = {"task": pl.String, "method": pl.String, "seed": pl.Int64, "trainable_params": pl.Int64,
                     "param_share": pl.Float64, "accuracy": pl.Float64, "steps": pl.Int64}  # fmt: skip
HEADLINE_KEYS = ("final_step", "node_jaccard_final_vs_base", "edge_jaccard_final_vs_base",
                 "abs_score_spearman_final_vs_base", "critical_layers_topk",
                 "critical_layers_mean_std")  # fmt: skip


def report_rebuild(stage: str) -> str:
    """Return how a report input written by the pipeline's ``stage`` is rebuilt: that stage rewrites its
    outputs on every run (the analysis, the comparison's table and figure, the accuracy figure), and the
    stages before it reuse what is done."""
    return f"rerun python -m jobs.pipeline with the same config (its {stage} stage writes it again)"


def analysis_table(outputs: StudyOutputs, name: str) -> pl.DataFrame:
    """Return the analysis table ``name``, checked (DamagedFileError names a damaged one)."""
    path = outputs.analysis / f"{name}.parquet"
    return read_parquet_checked(path, report_rebuild("analysis"), ANALYSIS_TABLES[name])


def figure_rebuild(outputs: StudyOutputs, path: Path) -> str:
    """Return how the report's figure ``path`` is rebuilt: by the stage whose output directory holds it."""
    if path.is_relative_to(outputs.analysis):
        return report_rebuild("analysis")
    return report_rebuild("comparison" if path.is_relative_to(outputs.comparison) else "accuracy")


def check_figures(outputs: StudyOutputs, report: Report) -> None:
    """Check every figure of ``report`` is a whole PNG (DamagedFileError names the first that is not)."""
    for section in report.sections:
        for figure in section.figures:
            check_png(figure.path, figure_rebuild(outputs, Path(figure.path)))


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def accuracy_section(outputs: StudyOutputs) -> ReportSection:
    (base_label, base), (tuned_label, tuned) = outputs.accuracy.items()
    name = TaskSpec.model_validate(read_run_record(outputs.run)["task"]).dataset_name()
    table = pl.DataFrame({"task": list(base), base_label: [100 * v for v in base.values()],
                          tuned_label: [100 * tuned[t] for t in base]})  # fmt: skip
    text = (
        f"The pre-trained model solves {_pct(base.get(name, 0.0))} of the held-out circuit split of "
        f"{name}; after fine-tuning ({tuned_label}) it solves {_pct(tuned.get(name, 0.0))}. The other tasks "
        "show what fine-tuning on one task does to the rest (none of them was trained on)."
    )
    return ReportSection(
        title="Accuracy before and after fine-tuning", text=text,
        figures=[Figure(path=outputs.accuracy_figure, caption="Accuracy on each task's circuit split (%).")],
        tables=[Table(rows=table, caption="Accuracy on each task's circuit split (%).")],
    )  # fmt: skip


def similarity_section(outputs: StudyOutputs, headline: dict) -> ReportSection:
    similarity = analysis_table(outputs, "similarity")
    budgets = analysis_table(outputs, "similarity_by_budget")
    text = (
        f"Between the base model and the final checkpoint (step {headline['final_step']}), the circuits "
        f"share nodes far more than edges: node Jaccard {headline['node_jaccard_final_vs_base']:.3f}, edge "
        f"Jaccard {headline['edge_jaccard_final_vs_base']:.3f}, Spearman of the edges' |score| "
        f"{headline['abs_score_spearman_final_vs_base']:.3f}. Fine-tuning keeps which components matter "
        "and rewires how they connect. Jaccard depends on the circuit's size, so the second figure states "
        "it at every edge budget."
    )
    columns = ["step", "node_jaccard_base", "edge_jaccard_base", "node_jaccard_prev", "edge_jaccard_prev",
               "abs_score_spearman_base", "accuracy"]  # fmt: skip
    return ReportSection(
        title="Circuit similarity over fine-tuning steps", text=text,
        figures=[
            Figure(path=outputs.analysis / "similarity.png", caption="Similarity of each checkpoint's "
                   "circuit to the base circuit and to the previous checkpoint's."),
            Figure(path=outputs.analysis / "jaccard_by_budget.png",
                   caption="Node and edge Jaccard, base vs final, against the circuit's edge budget."),
        ],
        tables=[Table(rows=similarity.select(c for c in columns if c in similarity.columns),
                      caption="Similarity per checkpoint (Jaccard against the base and the previous one)."),
                Table(rows=budgets, caption="Base vs final circuit at each edge budget.")],
    )  # fmt: skip


def not_computed(title: str, setting: str) -> ReportSection:
    return ReportSection(title=title, text=f"Not computed in this study ({setting}).")


GROUND_TRUTH_TITLE = "Ground truth: is the rewiring an artefact of attribution error?"
AGREEMENT_LABELS = {"pearson": "Pearson", "spearman": "Spearman", "abs_spearman": "Spearman of |score|",
                    "top_overlap": "top-5% overlap"}  # fmt: skip
REWIRING_GAP = 0.1  # exact circuits "keep nodes, rewire edges" when node Jaccard beats edge Jaccard by this


def ground_truth_section(outputs: StudyOutputs, headline: dict) -> ReportSection:
    similarity = analysis_table(outputs, "similarity")
    if "truth_pearson" not in similarity.columns or "exact_edge_jaccard_final_vs_base" not in headline:
        return not_computed(GROUND_TRUTH_TITLE, "circuits.ground_truth=false")
    h = headline
    node, edge = h["exact_node_jaccard_final_vs_base"], h["exact_edge_jaccard_final_vs_base"]
    verdict = (
        "the exact circuits keep their nodes and rewire their edges too, so the headline is not an artefact "
        "of attribution error" if node - edge >= REWIRING_GAP else
        "the exact circuits do not show the headline's pattern, so it may be an artefact of attribution error"
    )  # fmt: skip
    agreement = "; ".join(
        f"{label} {h[f'truth_{key}_at_base']:.3f} -> {h[f'truth_{key}_at_final']:.3f}"
        for key, label in AGREEMENT_LABELS.items()
    )
    text = (
        "Every checkpoint's circuit also found by exact patching (each edge patched on its own). The "
        f"method's edge scores against the exact ones, base -> final checkpoint: {agreement}. Exact "
        f"circuits, final vs base: node Jaccard {node:.3f}, edge Jaccard {edge:.3f} (the method's: "
        f"{h['node_jaccard_final_vs_base']:.3f}, {h['edge_jaccard_final_vs_base']:.3f}): {verdict} (node "
        f"minus edge Jaccard at least {REWIRING_GAP})."
    )
    columns = ["step", "truth_pearson", "truth_spearman", "truth_abs_spearman", "truth_top_overlap",
               "node_jaccard_base", "exact_node_jaccard_base", "edge_jaccard_base",
               "exact_edge_jaccard_base"]  # fmt: skip
    return ReportSection(
        title=GROUND_TRUTH_TITLE, text=text,
        figures=[Figure(path=outputs.analysis / "ground_truth.png", caption="Left: the method's edge scores "
                        "against exact patching's per checkpoint. Right: Jaccard against the base circuit, "
                        "the method's circuits (solid) and the exact ones (dashed).")],
        tables=[Table(rows=similarity.select(columns),
                      caption="Agreement with exact patching, and Jaccard vs base of both circuits.")],
    )  # fmt: skip


def faithfulness_section(outputs: StudyOutputs) -> ReportSection:
    if not (outputs.analysis / "smallest_faithful_budget.parquet").is_file():
        return not_computed("Faithfulness against budget", "discovery.curve=false")
    smallest = analysis_table(outputs, "smallest_faithful_budget")
    budgets = smallest["smallest_faithful_budget"].drop_nulls()
    reach = (f"between {_pct(budgets.min())} and {_pct(budgets.max())} of the edges" if len(budgets)
             else "no budget measured")  # fmt: skip
    text = (
        f"Normalized faithfulness of each checkpoint's circuit against its edge budget. A circuit reaches "
        f"{FAITHFUL_AT:.0%} faithfulness with {reach}, depending on the checkpoint: the headline circuits "
        "(5%) recover only part of the model's behaviour."
    )
    return ReportSection(
        title="Faithfulness against budget", text=text,
        figures=[Figure(path=outputs.analysis / "faithfulness_by_checkpoint.png",
                        caption="Faithfulness against edge budget, one curve per checkpoint.")],
        tables=[Table(rows=smallest, caption=f"Smallest budget reaching {FAITHFUL_AT} faithfulness.")],
    )  # fmt: skip


def robustness_section(outputs: StudyOutputs) -> ReportSection:
    if not (outputs.analysis / "robustness_baselines.parquet").is_file():
        return not_computed("Robustness to perturbed inputs", "robustness.enabled=false")
    against = analysis_table(outputs, "robustness_baselines")
    kept = against.filter("keeps_gap")["baseline"].to_list()
    verdict = (f"the pre-trained circuit is more robust than {', '.join(kept)} by at least {ROBUSTNESS_GAP}"
               if kept else f"no baseline is beaten by {ROBUSTNESS_GAP} or more: the paper's gap does not "
               "hold on this model")  # fmt: skip
    text = (
        "Each model's circuit on perturbed circuit splits (a share of the items replaced) against its "
        "circuit on the unperturbed split. Baselines of the same shape are checked for input dependence "
        f"first (a degenerate one is flagged): {verdict}."
    )
    return ReportSection(
        title="Robustness to perturbed inputs", text=text,
        figures=[Figure(path=outputs.analysis / "robustness.png",
                        caption="Edge Jaccard against the unperturbed circuit, by share of items replaced.")],
        tables=[Table(rows=against, caption="Mean Jaccard over perturbation ratios, base vs each baseline.")],
    )  # fmt: skip


def critical_section(outputs: StudyOutputs, headline: dict) -> ReportSection:
    rows = [{"variant": v, "top-k": str(headline["critical_layers_topk"][v]),
             "mean + std": str(headline["critical_layers_mean_std"].get(v, []))}
            for v in headline["critical_layers_topk"]]  # fmt: skip
    text = (
        "Layers ranked by how much the edges touching them changed between the base and the final "
        "circuit; the critical layers are where CircuitLoRA puts its higher rank."
    )
    return ReportSection(
        title="Where the edges change: critical layers", text=text,
        figures=[Figure(path=outputs.analysis / "layer_scores.png", caption="Edge change per layer."),
                 Figure(path=outputs.analysis / "circuit_changes.png",
                        caption="Edges added and removed between the base and the final circuit.")],
        tables=[Table(rows=rows, caption="Critical layers per edge-change variant and rule.")],
    )  # fmt: skip


def explorer_section(outputs: StudyOutputs) -> ReportSection:
    if not (outputs.analysis / EXPLORER_FILE).is_file():
        return not_computed("Explore the circuits", "analysis.explorer=false")
    text = (
        f"[Open the circuit explorer]({EXPLORER_FILE}) (one offline page beside this report): every "
        "checkpoint's circuit on a fixed layout, with a slider over the checkpoints, the analysis' budgets, "
        "the edges and nodes added and removed against the base (or any checkpoint, side by side), the "
        "CircuitLoRA arms' final circuits to set beside them, the critical layers of each layer-score "
        "variant, and each node's and edge's scores over the steps."
    )
    return ReportSection(title="Explore the circuits", text=text)


def copy_explorer(outputs: StudyOutputs, out: Path) -> Path | None:
    """Copy the analysis' explorer page beside the report at ``out`` (atomically); return its path, or None
    when the analysis wrote none."""
    page = outputs.analysis / EXPLORER_FILE
    if not page.is_file():
        return None
    with atomic_file(Path(out).parent / EXPLORER_FILE) as tmp:
        tmp.write_bytes(page.read_bytes())
    return Path(out).parent / EXPLORER_FILE


def methods_section(outputs: StudyOutputs) -> ReportSection:
    table = read_parquet_checked(
        outputs.comparison / "comparison.parquet", report_rebuild("comparison"), COMPARISON_SCHEMA
    )
    shown = table.select("task", "method", "seed", "trainable_params",
                         (100 * pl.col("param_share")).alias("share_%"), (100 * pl.col("accuracy")).alias(
                             "accuracy_%"), "steps")  # fmt: skip
    lora = table.filter(pl.col("method") == "lora")
    lines = []
    if not lora.is_empty():
        for row in table.filter(pl.col("method") != "lora").iter_rows(named=True):
            base = lora.filter((pl.col("task") == row["task"]) & (pl.col("seed") == row["seed"]))
            if not base.is_empty():
                diff = 100 * (row["accuracy"] - base["accuracy"][0])
                lines.append(
                    f"{row['method']} {_pct(row['accuracy'])} with {row['trainable_params']:,} "
                    f"trainable parameters ({diff:+.1f} points against LoRA's "
                    f"{_pct(base['accuracy'][0])} with {base['trainable_params'][0]:,})"
                )
    seeds = table["seed"].n_unique()
    text = (f"Fine-tuning methods at matched parameter counts, {seeds} seed{'s' if seeds > 1 else ''}: "
            + ("; ".join(lines) if lines else "no LoRA row to compare with") + ". "
            + ("One seed cannot separate methods a few points apart: jobs.compare_methods with more "
               "seeds gives the spreads." if seeds == 1 else ""))  # fmt: skip
    return ReportSection(
        title="CircuitLoRA against LoRA", text=text,
        figures=[Figure(path=outputs.comparison / "comparison.png", caption="Final held-out accuracy.")],
        tables=[Table(rows=shown, caption="Each run: trainable parameters and final held-out accuracy.")],
    )  # fmt: skip


def appendix(outputs: StudyOutputs) -> Appendix:
    pipeline = outputs.pipeline
    compare = load_config(CompareConfig, pipeline.comparison)
    record = read_run_record(outputs.run)
    configs = {
        "jobs.pipeline": yaml.safe_dump(pipeline.model_dump(mode="json"), sort_keys=False),
        str(pipeline.comparison): Path(pipeline.comparison).read_text(),
        str(compare.finetune_config): Path(compare.finetune_config).read_text(),
        f"{outputs.run}/finetune.json (the studied run)": json.dumps(record, indent=1),
    }
    seeds = {"fine-tuning (comparison)": list(compare.seeds),
             "the studied run": [int(record["train"]["seed"])]}  # fmt: skip
    return Appendix(configs=configs, seeds=seeds, package_versions=package_versions())


def render_study_report(outputs: StudyOutputs, out: Path) -> Path:
    """Write the study's report to ``out`` (one self-contained HTML file) and return its path. Every input
    is checked first: DamagedFileError names a damaged one (and the stage that writes it), and nothing is
    written."""
    headline = read_json_with_keys(
        outputs.analysis / HEADLINE_FILE, report_rebuild("analysis"), HEADLINE_KEYS
    )
    record = read_run_record(outputs.run)
    report = Report(
        title="How fine-tuning rewires circuits",
        subtitle=f"{record['model']}, {record['method']['name']} on {record['task']['name']}",
        sections=[accuracy_section(outputs), similarity_section(outputs, headline),
                  ground_truth_section(outputs, headline), faithfulness_section(outputs),
                  robustness_section(outputs), critical_section(outputs, headline),
                  explorer_section(outputs), methods_section(outputs)],
        appendix=appendix(outputs),
    )  # fmt: skip
    check_figures(outputs, report)
    copy_explorer(outputs, out)
    return render_report(report, out)
