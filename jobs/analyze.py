"""Circuit dynamics of a fine-tuning run: similarity over steps, layer edge change, robustness, figures.

    python -m jobs.analyze --run runs/finetune-tiny [--set critical_k=3] [--run ANOTHER ...]

Reads the circuits of ``python -m jobs.circuits --run`` (same ``--set`` discovery
settings) and writes parquet tables and PNG figures to ``<circuits>/analysis``.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ftcircuits.circuits.graph import Graph
from ftcircuits.config.discovery import AnalysisConfig
from ftcircuits.models.loader import load_model
from ftcircuits.paths import atomic_file
from ftcircuits.report import circuit_figures as figures
from ftcircuits.run_layout import ANALYSIS_DIR
from ftcircuits.study import dynamics
from ftcircuits.study.over_run import circuits_dir, run_inputs
from ftcircuits.study.seeds import write_across
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run
from jobs.cli import config_parser, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--run",
        required=True,
        action="append",
        help="a fine-tuning run with its circuits "
        "(repeat for several runs, e.g. seeds: each analysed, then mean ± std over them)",
    )
    parser.add_argument("--out", type=Path, help="with several runs: where their summary goes")
    args = parser.parse_args(argv)
    configs = [parse_config(AnalysisConfig, args, [f"run={run}"]) for run in args.run]  # all checked first
    if len(configs) > 1 and args.out is None:
        parser.error("several runs need --out (where the summary over them goes)")
    headlines, similarities = {}, {}
    for config in configs:
        analysis = analyze_run(config)
        headlines[str(config.run)] = json.loads((analysis / dynamics.HEADLINE_FILE).read_text())
        similarities[str(config.run)] = pl.read_parquet(analysis / "similarity.parquet")
    if len(configs) > 1:
        summary = write_across(headlines, similarities, args.out)
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):
            print(pl.DataFrame([{"number": k, **v} for k, v in summary["summary"].items()]))
        print(f"over {len(configs)} runs: {args.out / dynamics.HEADLINE_FILE}")


def analyze_run(config: AnalysisConfig) -> Path:
    """Analyse one run's circuits; write and print its tables, figures and headline; return its dir."""
    inputs = run_inputs(config.run)
    out = circuits_dir(config.run, config, inputs)
    summary = dynamics.read_summary(out)
    architecture = load_model(inputs.base_model).architecture
    circuits = dynamics.checkpoint_circuits(out, summary)
    (first_step, base), (last_step, final) = circuits[0], circuits[-1]

    tables = {
        "similarity": dynamics.similarity_over_steps(circuits, summary),
        "layer_scores": dynamics.layer_change(
            base, final, architecture.layers, config.critical_count(architecture.layers)
        ),
        "edge_changes": dynamics.changed_circuit_edges(base, final),
    }
    tables["similarity_by_budget"] = dynamics.similarity_by_budget(base, final, Graph.of(architecture))
    curves = dynamics.faithfulness_by_checkpoint(out, summary)
    if not curves.is_empty():
        tables["faithfulness_by_budget"] = curves
        tables["smallest_faithful_budget"] = dynamics.smallest_faithful_budget(curves)
    if config.robustness:
        tables["robustness"] = dynamics.robustness(out, summary)
        tables["robustness_baselines"] = dynamics.robustness_against_baselines(tables["robustness"])
    analysis = out / ANALYSIS_DIR
    analysis.mkdir(exist_ok=True)
    for name, table in tables.items():
        with atomic_file(analysis / f"{name}.parquet") as tmp:
            table.write_parquet(tmp)

    scores = tables["layer_scores"]
    critical = dynamics.critical_by_variant(scores, "critical_topk")
    change = f"step {first_step} -> {last_step}"
    drawing, shape = analysis / "circuit_changes.png", (architecture.layers, architecture.heads)
    plots = [
        figures.similarity_over_steps(tables["similarity"], analysis / "similarity.png"),
        figures.layer_score_bars(scores, analysis / "layer_scores.png", critical, f"edge change, {change}"),
        figures.circuit_drawing(tables["edge_changes"], drawing, *shape, change),
    ]
    plots.append(figures.jaccard_by_budget(tables["similarity_by_budget"], analysis / "jaccard_by_budget.png",
                                           change))  # fmt: skip
    if "faithfulness_by_budget" in tables:
        labelled = tables["faithfulness_by_budget"].with_columns(circuit=pl.format("step {}", "step"))
        plots.append(figures.faithfulness_by_budget(labelled, analysis / "faithfulness_by_checkpoint.png",
                                                    "every checkpoint's circuit"))  # fmt: skip
    if "robustness" in tables:
        plots.append(figures.robustness_curves(tables["robustness"], analysis / "robustness.png"))

    headline = dynamics.headline_numbers(tables)
    with atomic_file(analysis / dynamics.HEADLINE_FILE) as tmp:
        tmp.write_text(json.dumps(headline, indent=1))
    uri, run_id = create_run(config.run, "analysis", f"{Path(config.run).name}-analysis",
                             config.model_dump(mode="json"))  # fmt: skip
    logger = RunLogger(uri, run_id)
    for key, value in headline.items():
        if isinstance(value, float):
            logger.metric(key, value, step=last_step)
    logger.artifact(analysis, ANALYSIS_DIR)
    logger.finish()
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):
        columns = ("node_jaccard_base", "edge_jaccard_base", "node_jaccard_prev", "edge_jaccard_prev")
        print(tables["similarity"].select("step", *columns, "abs_score_spearman_base", "accuracy"))
        if "robustness" in tables:
            print(tables["robustness"].pivot("model", index="ratio", values="edge_jaccard"))
            print(tables["robustness_baselines"])
        print(tables["similarity_by_budget"])
        if "smallest_faithful_budget" in tables:
            print(tables["smallest_faithful_budget"])
    print(json.dumps(headline, indent=1))
    print(f"tables and figures: {analysis} ({', '.join(p.name for p in plots)})")
    return analysis


if __name__ == "__main__":
    main()
